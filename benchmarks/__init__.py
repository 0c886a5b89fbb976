"""Benchmarks of the dpsgd framework (run as python -m benchmarks.<name>)."""
