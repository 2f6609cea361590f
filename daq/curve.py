"""ZeroMQ CURVE for the DAQ's sockets: key files, server and client set-up, the allow-list (ZAP).

Key files are pyzmq's ``zmq.auth`` certificates: ``NAME.key`` holds the public key (to hand out),
``NAME.key_secret`` the public and the secret key (to keep, mode 0600). ``na64 keys generate DIR/NAME``
writes a pair. The DAQ is the CURVE server of its ROUTER and XPUB sockets (``--server-key``); the clients
it accepts are the public keys in one directory (``--allowed-clients``), checked by a ZAP handler running
on the DAQ's event loop (:class:`AllowList`). A front-end or DQM is a client (``--server-public-key``,
``--client-key``). docs/protocol.md, "Deployment security", says how to deploy them.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

from daq.errors import ConfigError

log = logging.getLogger(__name__)

#: the ZAP domain of the DAQ's sockets
DOMAIN = "na64"


@dataclass(frozen=True)
class ServerKeys:
    """The DAQ's key pair and the directory of the public keys it accepts."""

    public: bytes
    secret: bytes
    allowed: Path


@dataclass(frozen=True)
class ClientKeys:
    """A client's key pair and the server's public key."""

    server_public: bytes
    public: bytes
    secret: bytes


def generate(target: Path) -> tuple[Path, Path]:
    """Write ``DIR/NAME.key`` (public) and ``DIR/NAME.key_secret`` (secret, mode 0600); never overwrite."""
    directory, name = target.parent, target.name
    if not name or name in (".", ".."):
        raise ConfigError(f"{target}: give DIR/NAME, e.g. keys/daq")
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise ConfigError(f"{path} exists: not overwritten (remove it first to make a new key)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        old = os.umask(0o077)  # the secret file is never readable by others, not even for a moment
        try:
            made_public, made_secret = zmq.auth.create_certificates(str(directory), name)
        finally:
            os.umask(old)
        os.chmod(made_public, 0o644)
    except OSError as e:
        raise ConfigError(f"{target}: cannot write the key files ({e.strerror or e})") from None
    return Path(made_public), Path(made_secret)


def _load(path: Path, option: str) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{option} {path}: not a key file ({e})") from None
    return public, secret


def load_secret(path: Path, option: str) -> tuple[bytes, bytes]:
    """(public, secret) of a ``.key_secret`` file; ConfigError naming ``option`` if it is not one."""
    public, secret = _load(path, option)
    if not secret:
        raise ConfigError(f"{option} {path}: no secret key in it (give the NAME.key_secret file)")
    return public, secret


def load_public(path: Path, option: str) -> bytes:
    """The public key of a ``.key`` (or ``.key_secret``) file."""
    return _load(path, option)[0]


def server_keys(key_file: Path | None, allowed: Path | None) -> ServerKeys | None:
    """``--server-key`` and ``--allowed-clients`` together, or neither (None: no CURVE)."""
    if key_file is None and allowed is None:
        return None
    if key_file is None or allowed is None:
        raise ConfigError("--server-key and --allowed-clients go together (CURVE needs both)")
    public, secret = load_secret(key_file, "--server-key")
    if not allowed.is_dir():
        raise ConfigError(f"--allowed-clients {allowed}: not a directory")
    if not any(allowed.glob("*.key")):
        raise ConfigError(f"--allowed-clients {allowed}: no public key files (*.key) in it")
    return ServerKeys(public, secret, allowed)


def client_keys(server_public: Path | None, client_key: Path | None) -> ClientKeys | None:
    """``--server-public-key`` and ``--client-key`` together, or neither (None: no CURVE)."""
    if server_public is None and client_key is None:
        return None
    if server_public is None or client_key is None:
        raise ConfigError("--server-public-key and --client-key go together (CURVE needs both)")
    public, secret = load_secret(client_key, "--client-key")
    return ClientKeys(load_public(server_public, "--server-public-key"), public, secret)


def add_client_options(p: argparse.ArgumentParser, who: str) -> None:
    """``--server-public-key`` and ``--client-key`` of a client command (``who``: front-end, DQM)."""
    p.add_argument(
        "--server-public-key",
        type=Path,
        default=None,
        metavar="FILE",
        help="the DAQ's public key file (NAME.key from na64 keys generate): talk to it over CURVE "
        "(with --client-key)",
    )
    p.add_argument(
        "--client-key",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"this {who}'s secret key file (NAME.key_secret); its NAME.key must be in the DAQ's "
        "--allowed-clients directory",
    )


def client_keys_of(args: argparse.Namespace) -> ClientKeys | None:
    """The CURVE client keys of ``--server-public-key``/``--client-key`` (None without them)."""
    return client_keys(args.server_public_key, args.client_key)


def secure_server(sock: zmq.Socket[Any], keys: ServerKeys) -> None:
    """Make ``sock`` a CURVE server (before bind); its clients are checked by the :class:`AllowList`."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True
    sock.zap_domain = DOMAIN.encode()


def secure_client(sock: zmq.Socket[Any], keys: ClientKeys) -> None:
    """Make ``sock`` a CURVE client of the server with ``keys.server_public`` (before connect)."""
    sock.curve_serverkey = keys.server_public
    sock.curve_publickey = keys.public
    sock.curve_secretkey = keys.secret


class AllowList:
    """The ZAP handler of the DAQ's context, on its asyncio loop: a client whose public key is not in the
    allowed directory completes no handshake (nothing it sends is received). ``on_denied(address)`` is
    called for each refused handshake. The keys are read at :meth:`start`."""

    def __init__(self, ctx: zmq.Context[Any], keys: ServerKeys, on_denied: Callable[[str], None]) -> None:
        from zmq.auth.asyncio import AsyncioAuthenticator

        on = on_denied

        class _Authenticator(AsyncioAuthenticator):
            def _send_zap_reply(self, request_id: bytes, status_code: bytes, *args: Any, **kw: Any) -> None:
                if status_code != b"200":
                    on(self._address)
                super()._send_zap_reply(request_id, status_code, *args, **kw)

            async def handle_zap_message(self, msg: list[bytes]) -> None:
                self._address = msg[3].decode(errors="replace") if len(msg) > 3 else "?"
                await super().handle_zap_message(msg)

        self.keys = keys
        self._auth = _Authenticator(ctx, log=logging.getLogger("zmq.auth"))

    def start(self) -> None:
        """Start answering ZAP requests (call from the running event loop, before binding)."""
        self._auth.start()
        self._auth.configure_curve(domain=DOMAIN, location=str(self.keys.allowed))
        log.info(
            "CURVE on: clients allowed from %s (%d keys)",
            self.keys.allowed,
            len(list(self.keys.allowed.glob("*.key"))),
        )

    def stop(self) -> None:
        self._auth.stop()


def is_loopback(endpoint: str) -> bool:
    """Whether a ZeroMQ endpoint is reachable only from this machine (ipc, inproc, tcp on loopback)."""
    transport, _, rest = endpoint.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # an interface name, a host name or '*': reachable from elsewhere
