"""Side-by-side benchmark (issue 7): ``python -m bench.run``, ``python -m bench.bench_check``."""
