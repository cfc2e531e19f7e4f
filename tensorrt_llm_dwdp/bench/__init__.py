"""Benchmarks: measured ratios, side by side, in one run."""
