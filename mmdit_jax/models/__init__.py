"""Flax Linen modules: pure functions of (params, inputs)."""
