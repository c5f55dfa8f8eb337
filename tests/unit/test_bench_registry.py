"""The benchmarks are found by file name; the module's docstring names each one."""

import re

from bench.__main__ import BENCHMARKS
from bench.__main__ import __doc__ as doc


def test_every_benchmark_file_is_found_and_named_in_the_help() -> None:
    assert {"journal", "forward", "ledger"} <= set(BENCHMARKS)
    named = set(re.findall(r'"([a-z_]+)"', doc.split("Today:")[1]))
    assert named == set(BENCHMARKS)
