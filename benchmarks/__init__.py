"""segkit's benchmarks: `make bench` runs them and writes BENCHMARKS.md and benchmarks/results.json."""
