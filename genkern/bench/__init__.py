"""The benchmark suite: cases defined once (genkern.bench.cases), run by `genkern bench` and by
pytest-benchmark (benchmarks/)."""
