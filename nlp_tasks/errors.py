"""The user's mistakes: one type, which the CLI prints as one line and exit 2. Anything else is a bug or a failure
of the machines, and keeps its traceback."""


class UserError(Exception):
    """Something in the config, the input or the output needs the user's attention; the message names it."""


class InputError(UserError):
    """The input cannot be annotated as configured; the message names the file and problem."""
