"""The ``edgeopt`` command line.

Each command lives in its own module and imports the SDK inside its body, so ``edgeopt --help`` stays
fast and never imports TensorFlow, onnx or onnxruntime. Errors become one ``error:`` line (and a
``hint:`` line) with the documented exit code; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import functools
import os
import sys

import typer

app = typer.Typer(
    name="edgeopt",
    help="Take a trained model to edge hardware (Raspberry Pi, Jetson, Coral) and prove how fast it runs there.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Command modules register themselves on `app` when imported (one module per command or group).
_COMMAND_MODULES = ["targets_cmd", "convert_cmd", "devices_cmd", "bench_cmd", "deploy_cmd",
                    "results_cmd", "compare_cmd", "report_cmd", "explain_cmd", "bundle_cmd", "sweep_cmd"]


def _version(value: bool):
    if value:
        from edgeopt import __version__
        typer.echo(f"edgeopt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    """edgeopt: convert, deploy, benchmark."""


def register_commands():
    """Import every command module, which registers its command on ``app``."""
    import importlib
    for name in _COMMAND_MODULES:
        try:
            importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise


def console(stderr: bool = False):
    """A rich Console for tables: the terminal's width, or 140 columns when output goes to a file or pipe
    (rich's 80-column default squeezes the wide benchmark tables into unreadable cells).

    Markup and emoji codes are off and every string loses its control characters on the way to the terminal:
    what edgeopt prints comes from devices, result files and model files, and a device string such as ``[/x]``
    or an escape sequence must print as text, not crash, restyle the table or move the cursor. Colour is given
    with :func:`styled`."""
    stream = sys.stderr if stderr else sys.stdout
    return _console_class()(stderr=stderr, width=None if stream.isatty() else 140, markup=False, emoji=False)


@functools.lru_cache(maxsize=1)
def _console_class():
    from rich.console import Console

    from edgeopt.results.sanitize import text

    class PlainTextConsole(Console):
        """Console.render_str turns every printed string and table cell into Text: cleaned here, once."""

        def render_str(self, string, **kwargs):
            return super().render_str(text(string, 100_000), **kwargs)

    return PlainTextConsole


def styled(*parts):
    """Text with styles, never parsed as markup: ``styled("ok", ("not clean", "red"))``; control characters
    in the parts are removed (a device's escape sequences cannot move the cursor)."""
    from rich.text import Text

    from edgeopt.results.sanitize import text
    return Text.assemble(*[(text(p[0]), p[1]) if isinstance(p, tuple) else text(p) for p in parts])


def echo_json(obj):
    """Print ``obj`` as indented JSON on stdout (a command's --json output)."""
    import json
    typer.echo(json.dumps(obj, indent=2))


def error_exit(err, debug: bool = False):
    """Print an EdgeoptError as `error:` / `hint:` lines on stderr and exit with its code."""
    if debug:
        import traceback
        traceback.print_exc()
    from edgeopt.results.sanitize import text

    # messages quote device output and file contents: no escape sequences reach the terminal
    msg = str(err).strip() or type(err).__name__
    lines = [text(line, 10_000) for line in msg.splitlines()]
    sys.stderr.write(f"error: {lines[0]}\n")
    for line in lines[1:]:
        sys.stderr.write(f"  {line}\n")
    hint = getattr(err, "hint", None)
    if hint:
        sys.stderr.write(f"hint: {text(hint, 10_000)}\n")
    sys.stderr.flush()
    raise SystemExit(getattr(err, "exit_code", 2))


# import name -> the extra of pyproject.toml that installs it: a core install (`pip install edgeopt`) that runs
# `convert` reached onnx's import and said "internal error"
_MISSING_EXTRA = {"onnx": "all", "onnx2tf": "all", "tensorflow": "all", "onnxruntime": "all", "PIL": "all",
                  "ai_edge_litert": "runtime", "ray": "cluster"}


def main(argv=None):
    """Console entry point."""
    from edgeopt.errors import EdgeoptError

    register_commands()
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("EDGEOPT_DEBUG") == "1"
    if debug:
        os.environ["EDGEOPT_DEBUG"] = "1"  # the SDK then shows native logs too
    try:
        rv = app(args=args, prog_name="edgeopt", standalone_mode=False)
        # typer turns Ctrl-C into Exit(130) and, outside standalone mode, *returns* an Exit's code
        if rv == 130:
            raise KeyboardInterrupt
        if isinstance(rv, int) and not isinstance(rv, bool) and rv != 0:
            raise SystemExit(rv)
    except EdgeoptError as e:
        error_exit(e, debug)
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(130)
    except SystemExit:
        raise
    except Exception as e:  # click usage errors and anything unexpected: one line, exit 2 / 1
        kind = type(e).__name__  # click's classes (typer may vendor click), matched by name
        if kind == "Exit":
            raise SystemExit(getattr(e, "exit_code", 0))
        if hasattr(e, "format_message"):  # click.ClickException: usage errors
            sys.stderr.write(f"error: {e.format_message()}\n")
            raise SystemExit(2)
        if kind == "Abort":
            sys.stderr.write("error: aborted\n")
            raise SystemExit(130)
        extra = _MISSING_EXTRA.get((getattr(e, "name", None) or "").split(".")[0])
        if isinstance(e, ModuleNotFoundError) and extra and not debug:
            sys.stderr.write(f"error: this command needs the Python package {e.name.split('.')[0]!r}, which this "
                             f"installation of edgeopt does not have\nhint: pip install \"edgeopt[{extra}]\" "
                             "(see README: Install)\n")
            raise SystemExit(2)
        if debug:
            raise
        sys.stderr.write(f"error: internal error: {type(e).__name__}: {str(e)[:500]}\n"
                         "hint: rerun with --debug for the traceback and report it\n")
        raise SystemExit(1)
