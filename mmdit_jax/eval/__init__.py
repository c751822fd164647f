"""Evaluation: sample-based metrics (and, later, evaluators for the shapes data)."""
