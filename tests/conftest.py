"""Shared pytest configuration: the levels live in tests/unit, transport, fs and fault."""
