"""The site file's [store], [till_api] and [sell_rules]: defaults, and every bad key named."""

from __future__ import annotations

import copy

import pytest

from midshift.firmware.core.errors import ConfigError
from midshift.firmware.core.site_config import validate
from tests.unit.test_site_config import ALL_TYPES, doc

TILLS = {"store": {"id": "store-7", "tz": "Europe/Berlin"},
         "till_api": {"tokens_file": "/etc/midshift/till-tokens.json"},
         "sell_rules": {"offline_tenders": ["cash", "card"], "card_floor_limit": 5000,
                        "txn_cap": 20000, "offline_exposure_cap": 100000, "max_queue": 5000,
                        "card_max_offline_age_s": 7200, "manager_code_sha256": "ab" * 32}}


def tills(**changes: object) -> dict:
    d = doc()
    d.update(copy.deepcopy(TILLS))
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        if value is None:
            d[section].pop(key, None)
        else:
            d[section][key] = value
    return d


def test_defaults_and_values() -> None:
    cfg = validate(tills(), ALL_TYPES)
    assert cfg.store == {"id": "store-7", "tz": "Europe/Berlin"}
    api = cfg.till_api
    assert (api.bind, api.port, api.request_max_bytes, api.tls_cert) == (
        "127.0.0.1", 8443, 65536, None)
    assert cfg.sell_rules["card_floor_limit"] == 5000
    bare = validate(tills(sell_rules__offline_tenders=None, sell_rules__txn_cap=None), ALL_TYPES)
    assert bare.sell_rules["offline_tenders"] == ["cash"] and bare.sell_rules["txn_cap"] is None
    assert validate(doc(), ALL_TYPES).till_api is None


def test_a_tills_only_gateway_needs_no_device() -> None:
    d = tills()
    del d["devices"]
    assert validate(d, ALL_TYPES).devices == []


@pytest.mark.parametrize("changes, key, words", [
    ({"store__id": "store 7"}, "store.id", "letters"),
    ({"store__tz": "../etc/passwd"}, "store.tz", "IANA"),
    ({"store__colour": "red"}, "store.colour", "id, tz"),
    ({"till_api__port": 70000}, "till_api.port", "0 to 65535"),
    ({"till_api__tls_cert": "/x.crt"}, "till_api.tls_key", "both"),
    ({"till_api__client_ca": "/ca.crt"}, "till_api.client_ca", "tls_cert"),
    ({"till_api__tokens_file": None}, "till_api.tokens_file", "provision tills"),
    ({"till_api__request_max_bytes": 10}, "till_api.request_max_bytes", "1024"),
    ({"sell_rules__offline_tenders": ["cash", "cheque"]}, "sell_rules.offline_tenders[1]",
     "voucher"),
    ({"sell_rules__txn_cap": -1}, "sell_rules.txn_cap", "0 or more"),
    ({"sell_rules__max_queue": 1.5}, "sell_rules.max_queue", "0 or more"),
    ({"sell_rules__prices_max_age_s": -5}, "sell_rules.prices_max_age_s", "0 or more"),
    ({"sell_rules__prices_max_age_s": "1h"}, "sell_rules.prices_max_age_s", "0 or more"),
    ({"sell_rules__manager_code_sha256": "1234"}, "sell_rules.manager_code_sha256", "64"),
    ({"sell_rules__floor": 1}, "sell_rules.floor", "card_floor_limit"),
])
def test_bad_keys_are_named(changes: dict, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(tills(**changes), ALL_TYPES)
    assert info.value.key == key
    assert words in str(info.value)


def test_till_api_needs_a_store() -> None:
    d = tills()
    del d["store"]
    with pytest.raises(ConfigError, match="store: is required"):
        validate(d, ALL_TYPES)
    d = tills()
    del d["till_api"]
    with pytest.raises(ConfigError, match="till_api: is required"):
        validate(d, ALL_TYPES)
