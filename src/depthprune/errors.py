"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""


class DepthpruneError(Exception):
    """Bad input or missing resources; the message names the input and how to fix it."""


class DataNotFoundError(DepthpruneError):
    """A named dataset could not be found locally nor fetched from the hub."""
