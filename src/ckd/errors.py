"""Errors the command line turns into one line on stderr and exit code 2."""


class ConfigError(ValueError):
    """A bad configuration value: the message names it and says what is allowed."""


class RunDirError(FileExistsError):
    """The run directory already holds a run that this command would overwrite."""
