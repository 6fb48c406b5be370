"""Benchmark and load-test suite for ssehub (generator, peers, scenarios, reports)."""
