"""Errors that are the user's to fix.

Everything raised as a :class:`UserInputError` reaches the command line as one ``error: ...`` line on
stderr and exit status 2 (the run-directory contract in the README). Anything else is a bug in this
project and keeps its traceback.
"""


class UserInputError(Exception):
    """Bad input from the user: a config value, a missing or malformed data file.

    The message must name the key or file, the bad value, and the fix.
    """


class ConfigError(UserInputError):
    """A config file or ``--set`` override that cannot be used as written."""


class DataError(UserInputError):
    """A data file that is missing, malformed, or cannot supply what the config asks for."""
