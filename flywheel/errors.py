"""The one base class for failures a user can act on: the CLI prints its message as one line, no traceback."""


class FlywheelError(RuntimeError):
    """Raised with a message that names the fix (a command to run, a setting to change)."""
