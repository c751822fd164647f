"""Fixtures shared by the training tests: ``tiny_base_run`` lives in tests/conftest.py (the generate tests use it too)."""
