"""Fixtures for the relay tests (a pytest plugin registered in conftest.py)."""
