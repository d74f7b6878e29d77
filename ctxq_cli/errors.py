"""User-facing errors: one line that names the file, the variable and the problem."""


class CtxqError(Exception):
    """A problem with the user's input or options; reported as one line, never a traceback."""
