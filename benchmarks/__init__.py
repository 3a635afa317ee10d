"""Benchmarks run by `make bench` (`flywheel bench ...`): figures into var/bench/results.json, charts as PNG."""
