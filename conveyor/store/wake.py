"""Cross-process wake-ups for SQLite: NOTIFY's counterpart on one machine.

Every process listening on a SQLite database binds a UNIX datagram socket in a directory
derived from the database file; a process that commits notifications sends one datagram
to each peer after the commit. Like NOTIFY it is only a hint: a datagram that is lost
(full buffer, process gone) delays a wake-up until the next poll, never loses work.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger("conveyor.store.wake")

SUPPORTED = hasattr(socket, "AF_UNIX")
_PEER_CACHE_S = 0.5
_SEPARATOR = "\x00"


def wake_directory(database_path: str) -> Path:
    """A short, per-database directory (socket paths are limited to ~100 bytes)."""
    digest = hashlib.sha256(os.path.realpath(database_path).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"conveyor-wake-{os.getuid()}-{digest}"


class WakeSender:
    """Sends a process's committed notifications to the other listening processes."""

    def __init__(self, database_path: str) -> None:
        self._directory = wake_directory(database_path)
        self._socket: socket.socket | None = None
        self._peers: list[str] = []
        self._listed_at = 0.0
        self._own_prefix = f"{os.getpid()}-"

    def send(self, notifications: Iterable[tuple[str, str]]) -> None:
        messages = [
            f"{channel}{_SEPARATOR}{payload}".encode() for channel, payload in notifications
        ]
        if not messages or not SUPPORTED:
            return
        for peer in self._current_peers():
            for message in messages:
                try:
                    self._sock().sendto(message, peer)
                except (ConnectionRefusedError, FileNotFoundError):
                    # a process that died without cleaning up: forget its socket
                    with contextlib.suppress(OSError):
                        os.unlink(peer)
                    self._listed_at = 0.0
                    break
                except OSError:  # buffer full or similar: the peer will poll
                    break

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _sock(self) -> socket.socket:
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.setblocking(False)
        return self._socket

    def _current_peers(self) -> list[str]:
        now = time.monotonic()
        if now - self._listed_at > _PEER_CACHE_S:
            try:
                names = os.listdir(self._directory)
            except FileNotFoundError:
                names = []
            self._peers = [
                str(self._directory / n)
                for n in names
                if n.endswith(".sock") and not n.startswith(self._own_prefix)
            ]
            self._listed_at = now
        return self._peers


class WakeListener:
    """Receives other processes' notifications for one SQLite database."""

    def __init__(
        self,
        database_path: str,
        channels: list[str],
        on_notify: Callable[[str, str], None],
    ) -> None:
        self._directory = wake_directory(database_path)
        self._channels = set(channels)
        self._on_notify = on_notify
        self._socket: socket.socket | None = None
        self._path: Path | None = None

    def start(self) -> None:
        if not SUPPORTED:
            return
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._path = self._directory / f"{os.getpid()}-{os.urandom(4).hex()}.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self._path))
        sock.setblocking(False)
        self._socket = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read)

    async def stop(self) -> None:
        if self._socket is not None:
            asyncio.get_running_loop().remove_reader(self._socket.fileno())
            self._socket.close()
            self._socket = None
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()
            self._path = None

    def _read(self) -> None:
        assert self._socket is not None
        while True:
            try:
                data = self._socket.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("wake-up socket error: %s", exc)
                return
            channel, _, payload = data.decode(errors="replace").partition(_SEPARATOR)
            if channel in self._channels:
                self._on_notify(channel, payload)
