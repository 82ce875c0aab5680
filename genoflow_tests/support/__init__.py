"""Helpers shared by the test modules: servers, fakes, fixtures and process races (no tests)."""
