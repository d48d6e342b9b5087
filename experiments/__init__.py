"""Experiments: sweep scripts that turn CLI runs into tables (see README.md)."""
