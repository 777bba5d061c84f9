"""Errors that are the user's to fix.

Everything raised as a :class:`UserInputError` reaches the command line as one ``error: ...`` line on
stderr and exit status 2 (the run-directory contract, docs/run_directory.md). Anything else is a bug in this
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


INTERRUPTED = ("stopped by an interrupt (Ctrl-C). Run the same command again to continue: a run "
               "resumes from its last checkpoint (saved after every evaluated epoch or round), a "
               "grid skips its complete points.")
INTERRUPTED_REPORT = ("stopped by an interrupt (Ctrl-C); each report file is whole, either the "
                      "earlier report's or this one's. Run the same --report command again.")
WRITE_FAILED = ("cannot write {path}: {reason}. {fix} Then run the same command again: a run "
                "resumes from its last checkpoint, a grid skips its complete points.")
OUT_OF_MEMORY = ("out of memory ({detail}). Use a smaller model (model.hidden, model.width), a "
                 "smaller training.batch_size or training.eval_batch_size, or a machine with more "
                 "memory.")
# What the user can do about each kind of failed write (errno name -> fix).
_WRITE_FIXES = {
    "ENOSPC": "The disk is full: free space (or set output_dir on another disk).",
    "EDQUOT": "The disk quota is used up: free space (or set output_dir on another disk).",
    "EFBIG": "A file size limit stops the write (ulimit -f): raise it.",
    "EROFS": "The file system is read-only: set output_dir to a writable one.",
    "EACCES": "Permission denied: fix the permissions or set another output_dir.",
    "EPERM": "The operation is not permitted: fix the permissions or set another output_dir.",
    "EIO": "The disk reported an I/O error: check it, or set output_dir on another disk.",
}


def describe_fault(error: BaseException) -> str | None:
    """One line for a failure of the machine rather than of the code: a write refused by the
    file system (full disk, file size limit, read-only, permissions) or memory exhausted; None for
    anything else, which is a bug and keeps its traceback."""
    import errno
    import os

    if isinstance(error, OSError) and errno.errorcode.get(error.errno) in _WRITE_FIXES:
        path = error.filename if error.filename is not None else "a file"
        return WRITE_FAILED.format(path=path, reason=error.strerror or os.strerror(error.errno),
                                   fix=_WRITE_FIXES[errno.errorcode[error.errno]])
    text = " ".join(str(error).split())
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError" or (
            isinstance(error, RuntimeError) and "can't allocate memory" in text):
        detail = text if 0 < len(text) <= 200 else (text[:197] + "..." if text else
                                                    type(error).__name__)
        return OUT_OF_MEMORY.format(detail=detail)
    return None


NOT_A_REGULAR_FILE = "is a special file (a device, FIFO or socket), not a regular file"


def file_problem(path) -> str | None:
    """Why ``path`` cannot be read as a file (links followed), as words that follow the path in a
    message: "does not exist", "is a folder, not a file", or :data:`NOT_A_REGULAR_FILE` (``/dev/zero``
    would read forever, a FIFO would block); None for a regular file."""
    import os
    import stat

    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "does not exist"
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(mode):
        return NOT_A_REGULAR_FILE
    return None
