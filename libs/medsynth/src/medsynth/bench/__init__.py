"""Benchmarks: measured speed and quality on real or phantom data (`make bench-*`), never part of `make test`."""
