"""Card numbers masked in scans, product codes kept."""

from midshift.firmware.core.redact import gtin_ok, luhn_ok, redact_text

PORTABLE = True  # tests/micropython runs these cases under MicroPython too


def test_card_numbers_are_masked_and_product_codes_kept():
    # A Luhn-valid 16-digit PAN inside a scan: first 6 and last 4 kept.
    assert redact_text("PAY4111111111111111;") == ("PAY411111******1111;", 1)
    # 13 and 19 digits are cards too; 12 and 20 are not; a failed Luhn check is not.
    assert redact_text("4222222222222")[1] == 1
    assert redact_text("6011000990139424")[0] == "601100******9424"
    assert redact_text("4111111111111111000")[1] == (1 if luhn_ok("4111111111111111000") else 0)
    assert redact_text("41111111111111110000") == ("41111111111111110000", 0)
    assert redact_text("411111111111") == ("411111111111", 0)
    assert redact_text("4111111111111112") == ("4111111111111112", 0)
    # An EAN-13 that also passes Luhn: kept only when the symbology says EAN.
    ean = "4006381333924"  # a valid GTIN-13 that passes Luhn too
    assert luhn_ok(ean) and gtin_ok(ean)
    assert redact_text(ean, True) == (ean, 0)
    assert redact_text(ean, False)[0] == "400638***3924"  # starts with 4: could be Visa
    store_code = "2028700000036"  # a GS1 in-store code passing Luhn: no card starts so
    assert luhn_ok(store_code) and gtin_ok(store_code)
    assert redact_text(store_code) == (store_code, 0)
