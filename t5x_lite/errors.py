"""The one exception type a user can cause, reported by the CLI as a single line."""


class UserError(ValueError):
    """Bad input (config, data, checkpoint, mesh) that the user can fix.

    The message is one line that says what is wrong and what to change. The CLI prints
    `error: <message>` and exits with status 2 instead of showing a traceback.
    """


class Interrupted(UserError):
    """Ctrl-C or SIGTERM stopped a run; the message says where it can resume from."""
