"""Helpers for `scripts/bench/fanout`: child roles, process control, measurement."""
