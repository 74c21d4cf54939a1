"""Benchmarks: latency percentiles per stage against PyTorch in the same run."""
