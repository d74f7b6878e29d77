"""User-facing errors: one line that names the file, the variable and the problem."""

EXIT_INTERRUPTED = 75  # sysexits EX_TEMPFAIL: try again (with --resume) and it will go on


class CtxqError(Exception):
    """A problem with the user's input or options; reported as one line, never a traceback."""


class OptionError(CtxqError, ValueError):
    """An invalid option. The text names it as ``Kind.field`` (``TrainOptions.window``); the
    command line shows the field's flag instead (``--window``)."""


class Interrupted(CtxqError):
    """Training stopped by a signal after writing a resumable state; exit code 75."""
