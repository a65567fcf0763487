"""The one exception type that reaches the user as a single line."""


class UserError(Exception):
    """Bad input or an unusable environment: the message says what was wrong and what to do.

    The CLI prints it as one line on standard error and exits non-zero, without a traceback.
    """

    exit_code = 2
