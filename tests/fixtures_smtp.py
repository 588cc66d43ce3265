"""Fixtures for the smtp tests (a pytest plugin registered in conftest.py)."""
