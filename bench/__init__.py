"""RateGuard's benchmark suite: micro-benchmarks (pytest-benchmark, ``bench/test_*.py``)
and a load harness (``python -m bench``). See bench/README.md."""
