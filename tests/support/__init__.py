"""Helpers shared by the test suites: tiny real models, fixtures."""
