"""Errors the command line turns into one line on stderr and exit code 2."""


class ConfigError(ValueError):
    """A bad configuration value: the message names it and says what is allowed."""


class RunDirError(FileExistsError):
    """The run directory already holds a run that this command would overwrite."""


def one_line(error: BaseException, limit: int = 200) -> str:
    """``error``'s message on one line (whitespace runs made single spaces), at most ``limit``
    characters; its type's name when it has no message."""
    return " ".join(str(error).split())[:limit] or type(error).__name__
