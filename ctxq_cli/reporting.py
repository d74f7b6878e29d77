"""How a command reports: log lines on stderr (``ctxq: ...``), one line for every error, and
exit codes (0 done, 1 a user error, 3 a bug, 75 interrupted with a resumable state, 130
interrupted by the user)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator

import typer

from ctxq_cli.errors import EXIT_INTERRUPTED, CtxqError, Interrupted

EXIT_USER_ERROR = 1
EXIT_INTERNAL_ERROR = 3


@contextlib.contextmanager
def reporting(quiet: bool) -> Iterator[bool]:
    """Configure logging; turn CtxqError into one line and exit 1. Yields show-progress (a bar
    on a terminal, log lines in a batch log)."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="ctxq: %(message)s", stream=sys.stderr, force=True)
    try:
        yield not quiet
    except (typer.Exit, typer.Abort):
        raise
    except Interrupted as exc:
        typer.echo(f"ctxq: {exc}", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except CtxqError as exc:
        typer.echo(f"ctxq: error: {as_flags(str(exc))}", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        typer.echo("ctxq: interrupted", err=True)
        raise typer.Exit(130) from None
    except MemoryError:
        typer.echo("ctxq: error: out of memory (try a smaller --batch-size)", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except RuntimeError as exc:
        if "out of memory" not in str(exc).lower():
            raise _internal(exc) from None
        typer.echo("ctxq: error: out of device memory (try a smaller --batch-size or "
                   "--device cpu)", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except Exception as exc:  # a bug, not a user error: still one line unless asked
        raise _internal(exc) from None


FLAGS = {"variables": "--var"}   # fields whose flag is not their name with dashes


def as_flags(text: str) -> str:
    """Option fields named in an error (``TrainOptions.max_minutes``) as their flags
    (``--max-minutes``)."""
    # not inside a path such as runs/TrainOptions.txt
    return re.sub(r"(?<![\w/.\\-])[A-Z]\w*Options\.(\w+)",
                  lambda m: FLAGS.get(m[1], "--" + m[1].replace("_", "-")), text)


def _internal(exc: BaseException) -> BaseException:
    """Report an unexpected exception in one line (re-raised whole under CTXQ_DEBUG)."""
    if os.environ.get("CTXQ_DEBUG"):
        return exc
    first = str(exc).splitlines()[0] if str(exc) else ""
    typer.echo(f"ctxq: internal error: {type(exc).__name__}: {first} "
               "(set CTXQ_DEBUG=1 for a traceback)", err=True)
    return typer.Exit(EXIT_INTERNAL_ERROR)
