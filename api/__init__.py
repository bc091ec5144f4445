"""Vigil's entry points: the ``vigil`` command line (and, next, the HTTP API)."""
