"""Command line: argument parsing, printing and exit codes only; the work lives in the library.

Each command imports its library module lazily so `diffaudit --help` stays fast.
"""
from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Optional

import typer

from .errors import DiffauditError

app = typer.Typer(
    name="diffaudit",
    help="Membership-inference audits of (latent) diffusion models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    _state["debug"] = debug


def echo(msg: str = "") -> None:
    typer.echo(msg)


# -- commands begin (one function per command; keep bodies thin) --
# -- commands end --


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: runs the app; DiffauditError becomes one line on stderr and exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        app(args=args, standalone_mode=False)
    except DiffauditError as e:
        if debug:
            traceback.print_exc()
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted: rerun the same command to resume", err=True)
        sys.exit(130)
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        if debug:
            raise
        typer.echo(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
