"""Errors a user can cause when opening or querying the results database."""


class StoreError(Exception):
    """The database cannot be opened or a request names something that does not exist."""
