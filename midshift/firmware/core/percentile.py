"""Percentiles by rank, the one definition for latency figures everywhere: the
reconciliation report, the shift outcome, the benchmarks, and later the core's own
adaptive hedge delay.

``percentile(values, q)`` is the value at index ``min(n - 1, floor(q * n))`` of the
sorted values: no interpolation, so the answer is always a value that was observed (a
latency that happened, not an average of two), the maximum for ``q = 1``, and the upper
median for an even count at ``q = 0.5``. ``None`` when there are no values: the caller
decides how to show "no data".
"""


def percentile(values, q):
    """The ``q``-quantile (0 <= q <= 1) of ``values`` (any iterable of numbers) by rank."""
    v = sorted(values)
    if not v:
        return None
    return v[min(len(v) - 1, int(q * len(v)))]
