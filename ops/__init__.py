"""Operator tooling: the longtake CLI, settings, benchmarks, monitoring configuration."""
