"""Errors the CLI reports as a clear one-line message and a non-zero exit code."""


class HistopathError(Exception):
    """A problem with the user's input or environment, reported without a traceback.

    Attributes:
      exit_code: process exit code the CLI returns for this error.
    """

    exit_code = 1


class DataError(HistopathError):
    """Input data is missing, empty or not in the expected layout."""


class ConfigError(HistopathError):
    """A configuration file or flag is unreadable or invalid."""


class NotBlessedError(HistopathError):
    """No trained model passed its evaluation thresholds, so nothing was pushed."""

    exit_code = 3
