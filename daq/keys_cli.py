"""``na64 keys generate DIR/NAME``: a ZeroMQ CURVE key pair for the DAQ, a front-end or a DQM."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "keys",
        help="make CURVE key pairs for the DAQ's sockets (see docs/protocol.md, deployment security)",
        description="Manage the ZeroMQ CURVE keys that authenticate and encrypt the links front-end -> DAQ "
        "and DAQ -> DQM (pyzmq's zmq.auth certificate format).",
    )
    sub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    g = sub.add_parser(
        "generate",
        help="write DIR/NAME.key (public) and DIR/NAME.key_secret (secret, mode 0600)",
        description="Write a new key pair: DIR/NAME.key holds the public key (give it to the peers: the "
        "DAQ's goes to every front-end and DQM as --server-public-key; a client's goes into the DAQ's "
        "--allowed-clients directory); DIR/NAME.key_secret holds the secret key (--server-key of the DAQ, "
        "--client-key of a front-end or DQM), readable only by its owner. Existing files are never "
        "overwritten.",
    )
    g.add_argument("target", type=Path, metavar="DIR/NAME", help="where to write, e.g. keys/daq")
    g.set_defaults(run=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from daq.curve import generate

    public, secret = generate(args.target)
    print(f"na64 keys: wrote {public} (public: hand it out) and {secret} (secret: keep it, mode 0600)")
    return 0
