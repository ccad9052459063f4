"""The one user-facing error type, defined in the bottom layer so every layer can raise it."""


class ScyllaError(Exception):
    """Bad input or a missing resource. The CLI prints the message on one line and exits 1."""
