"""The ``na64`` command: one entry point, one subcommand per job.

This module is the composition root: it is the only runtime code allowed to import every package.
Each subcommand lives in its package's own ``*_cli`` module exposing ``register(subparsers)``, which adds
a parser and sets ``run=<function(args) -> exit code>``. User mistakes (:class:`~daq.errors.UserError`)
end with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence

# Before numpy is imported: no job here does multi-threaded linear algebra (the calibration fits are
# small), and OpenBLAS's thread pool costs ~0.2 CPU s per process at start-up and spins in the services.
# A value set by the user wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from daq import __version__
from daq.errors import Na64Error, UserError
from daq.logs import FORMATS, LEVELS, configure_logging

#: modules providing subcommands, in the order ``--help`` lists them, with the commands each registers
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "daq.demo": ("demo",),
    "simulator.simulate_cli": ("simulate",),
    "daq.daq_cli": ("daq", "inspect", "recover"),
    "dqm.dqm_cli": ("dqm", "dqm-reference"),
    "calibration.calibrate_cli": ("calibrate",),
    "simulator.replay_cli": ("replay",),
    "daq.retrigger_cli": ("retrigger",),
    "daq.conformance_cli": ("conformance",),
    "daq.keys_cli": ("keys",),
}


def command_in(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not a top-level option), or None when
    there is none or the top-level help is asked for first."""
    words = iter(argv)
    for word in words:
        if word in ("-h", "--help"):
            return None
        if word in ("--log-level", "--log-format"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``na64`` parser. Only the module of the subcommand named in ``argv`` is imported (each pulls
    in its own stack: bokeh, numba, the simulator ... ~0.35 s of start-up for all of them); every module
    when no known subcommand is named (the top-level help, a mistyped command)."""
    parser = argparse.ArgumentParser(
        prog="na64",
        description="NA64 readout and data-quality monitoring: simulate a front-end, run the DAQ, "
        "monitor it live, calibrate, replay and re-trigger recorded spills.",
    )
    parser.add_argument("--version", action="version", version=f"na64daq {__version__}")
    add_logging_options(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    command = command_in(sys.argv[1:] if argv is None else argv)
    wanted = [name for name, commands in COMMAND_MODULES.items() if command in commands]
    for name in wanted or COMMAND_MODULES:
        if importlib.util.find_spec(name) is None:
            continue  # a package's subcommand module not written yet: no placeholder is shown
        importlib.import_module(name).register(sub)
    use_help_formatter(parser)
    return parser


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default once: not when its help already says it (``default ...``), nor for a
    default that means "not given" (None, False, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "%(default)" in text
            or "default" in text.lower()
            or action.default in (None, False, argparse.SUPPRESS)
            or action.default == []
            or not action.option_strings
        ):
            return action.help
        return text + " (default: %(default)s)"


def use_help_formatter(parser: argparse.ArgumentParser, top_level: bool = True) -> None:
    """:class:`HelpFormatter` for ``parser`` and every subcommand parser under it, and the logging
    options on every subcommand (``na64 daq --log-level DEBUG`` as well as ``na64 --log-level DEBUG daq``)."""
    parser.formatter_class = HelpFormatter
    if not top_level:
        add_logging_options(parser, top_level=False)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for p in action.choices.values():
                use_help_formatter(p, top_level=False)


def add_logging_options(parser: argparse.ArgumentParser, top_level: bool) -> None:
    """``--log-level`` and ``--log-format``; a subcommand's copies override the top-level ones only when
    given (their default is left unset)."""
    default = (lambda value: value) if top_level else (lambda value: argparse.SUPPRESS)
    parser.add_argument(
        "--log-level",
        default=default("INFO"),
        choices=LEVELS,
        help="logging threshold: INFO (default) or DEBUG, WARNING, ERROR; before or after the command",
    )
    parser.add_argument(
        "--log-format",
        default=default("text"),
        choices=FORMATS,
        help="log lines as text (default: ISO time with zone, level, logger, message) or one JSON "
        "object per line",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        return int(args.run(args) or 0)
    except UserError as e:
        print(f"na64 {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Na64Error as e:
        print(f"na64 {args.command}: failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
