"""What the database layer raises to everyone above it."""


class DatabaseUnavailable(Exception):
    """The database could not do the work (down, pool exhausted, disk full...)."""
