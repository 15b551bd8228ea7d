"""Developer tooling outside the installed package: benchmarks, coverage, CPU tuning."""
