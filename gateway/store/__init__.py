"""Persistence: engine, typed tables, repositories, migrations."""
