"""Shared pytest configuration."""

from hypothesis import settings

settings.register_profile("ci", deadline=None, max_examples=200)
settings.load_profile("ci")
