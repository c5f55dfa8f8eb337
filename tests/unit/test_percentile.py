"""The one percentile: by rank, no interpolation, None for no values."""

from midshift.firmware.core.percentile import percentile


def test_no_values_has_no_percentile():
    assert percentile([], 0.5) is None
    assert percentile(iter(()), 0.99) is None


def test_one_value_is_every_percentile():
    assert percentile([7], 0.0) == 7
    assert percentile([7], 0.5) == 7
    assert percentile([7], 1.0) == 7


def test_the_value_at_floor_of_q_times_n_of_the_sorted_values():
    values = [50, 10, 40, 20, 30]  # unsorted on purpose
    assert percentile(values, 0.0) == 10
    assert percentile(values, 0.5) == 30
    assert percentile(values, 0.79) == 40  # floor(3.95) = 3
    assert percentile(values, 0.99) == 50
    assert percentile(values, 1.0) == 50  # the maximum, not an index past the end


def test_an_even_count_gives_the_upper_median_and_never_interpolates():
    assert percentile([1, 2, 3, 4], 0.5) == 3
    assert percentile([1.5, 2.5], 0.5) == 2.5


def test_p99_of_a_hundred_values_is_the_largest_and_of_a_thousand_the_tenth_largest():
    assert percentile(range(1, 101), 0.99) == 100
    assert percentile(range(1, 1001), 0.99) == 991
