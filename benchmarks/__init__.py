"""Benchmarks for ZiPo (run as modules: python -m benchmarks.speed)."""
