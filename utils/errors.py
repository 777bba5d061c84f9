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


def warn_user(message: str, record: list[str] | None = None) -> None:
    """Tell the user something they should know about their run: one ``warning: ...`` line on
    stderr, and the message appended to ``record`` (a trainer's ``warnings``, which summary.json
    lists), so that the run's record says it too."""
    import sys

    print(f"warning: {message}", file=sys.stderr, flush=True)
    if record is not None:
        record.append(message)
