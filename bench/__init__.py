"""Benchmarks (`make bench`): each `bench/bench_<name>.py` has `main(argv)` and writes docs/results/<name>*.md."""
