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
import logging
import os
import sys
from collections.abc import Sequence

# Before numpy is imported: no job here does multi-threaded linear algebra (the calibration fits are
# small), and OpenBLAS's thread pool costs ~0.2 CPU s per process at start-up and spins in the services.
# A value set by the user wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from daq import __version__
from daq.errors import Na64Error, UserError

#: modules providing subcommands, in the order ``--help`` lists them
COMMAND_MODULES = (
    "daq.demo",
    "simulator.simulate_cli",
    "daq.daq_cli",
    "dqm.dqm_cli",
    "calibration.calibrate_cli",
    "simulator.replay_cli",
    "daq.retrigger_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="na64",
        description="NA64 readout and data-quality monitoring: simulate a front-end, run the DAQ, "
        "monitor it live, calibrate, replay and re-trigger recorded spills.",
    )
    parser.add_argument("--version", action="version", version=f"na64daq {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging threshold (default: INFO)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is None:
            continue  # a package's subcommand module not written yet: no placeholder is shown
        importlib.import_module(name).register(sub)
    return parser


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
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
