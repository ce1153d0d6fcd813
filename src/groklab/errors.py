"""Errors a user can cause: bad configs, paths, corrupt files, impossible settings.

The CLI catches `UserError` at the edge and prints its message on one line with exit code 2.
Anything else is a bug and may raise with a traceback.
"""


class UserError(Exception):
    """Something the user can fix; the message says what is wrong and what to do."""


class ConfigError(UserError):
    """An invalid config, preset name, override or setting."""


class RunDirError(UserError):
    """A run directory that is missing, corrupt, unwritable or already taken."""
