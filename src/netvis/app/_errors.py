"""How the ``netvis`` command line reports errors: one line, a fixed form, a meaningful exit status.

Every error ends the command with a single line on standard error::

    netvis: error: <file>: <problem>        (or ``netvis: error: <problem>`` when no file is involved)

and the exit status says what kind of error it was:

======  ===========================================================================================
status  meaning
======  ===========================================================================================
``2``   a usage error: an unknown option, a missing argument, a value out of range (``--batch-size 0``)
``1``   a runtime error: an unreadable image, a read-only or full output folder, a bad checkpoint, ...
``130`` interrupted (Ctrl-C)
======  ===========================================================================================

``netvis --debug COMMAND ...`` (or ``NETVIS_DEBUG=1``) shows the full traceback instead.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from typing import Any

import click

from netvis.io import DiskFullError

__all__ = ["ReportingGroup", "debug_option", "describe_error"]


def describe_error(exc: BaseException) -> str:
    """The ``<file>: <problem>`` (or ``<problem>``) text of an error, on one line."""
    if isinstance(exc, DiskFullError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        text = f"no space left on {exc.filename}" if exc.filename else "no space left on the device"
    elif isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        problem = exc.strerror[:1].lower() + exc.strerror[1:]
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            problem += " (is the folder read-only?)" if exc.errno == errno.EROFS else " (check the permissions)"
        text = f"{os.fspath(exc.filename)}: {problem}"
    elif isinstance(exc, (ValueError, LookupError, RuntimeError, OSError, TypeError)) and str(exc):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        text += " (run netvis --debug ... for the traceback)"
    return " ".join(text.split()) or type(exc).__name__


def _fail(message: str, status: int) -> None:
    click.echo(f"netvis: error: {message}", err=True)
    sys.exit(status)


class ReportingGroup(click.Group):
    """A :class:`click.Group` whose errors are one line ``netvis: error: ...`` with exit status 2 (usage) or
    1 (runtime), unless ``--debug`` (or ``NETVIS_DEBUG=1``) asks for the traceback.

    Decorate the group's function with :func:`debug_option` for its ``--debug`` flag.
    """

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        self._debug = bool(os.environ.get("NETVIS_DEBUG"))
        try:
            status = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            _fail(" ".join(exc.format_message().split()) + hint, 2)
        except click.ClickException as exc:
            if self._debug and exc.__cause__ is not None:
                traceback.print_exception(exc.__cause__)
            _fail(" ".join(exc.format_message().split()), exc.exit_code)
        except click.Abort:
            _fail("aborted", 1)
        except KeyboardInterrupt:
            click.echo("netvis: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            if self._debug:
                raise
            _fail(describe_error(exc), 1)
        sys.exit(status if isinstance(status, int) else 0)

    def set_debug(self, value: bool) -> None:
        """Called by the group's ``--debug`` flag."""
        self._debug = self._debug or value


def debug_option() -> Any:
    """The ``--debug`` flag of a :class:`ReportingGroup` (decorate the group's function with it)."""

    def callback(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        command = ctx.find_root().command
        if isinstance(command, ReportingGroup):
            command.set_debug(value)
        return value

    return click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=callback,
                        help="Show the full traceback of an error.")
