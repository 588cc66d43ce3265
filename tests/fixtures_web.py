"""Fixtures for the web tests (a pytest plugin registered in conftest.py)."""
