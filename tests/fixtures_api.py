"""Fixtures for the api tests (a pytest plugin registered in conftest.py)."""
