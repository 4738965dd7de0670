"""Benchmarks. Each prints a table and writes JSON; figures go to docs/benchmarks.md."""
