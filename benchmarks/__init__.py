"""Benchmark scripts for celery_durable (run as ``python -m benchmarks.<name>``; see README.md)."""
