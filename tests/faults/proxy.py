"""A tiny user-space TCP proxy for partition tests (``tc netem`` is not available here).

Run it as its own process, so a test can pause it::

    python -m tests.faults.proxy --listen 127.0.0.1:6543 --target 127.0.0.1:5432

* **pass**: bytes are copied both ways as they come.
* **black hole**: ``SIGSTOP`` the proxy. Every socket stays open and the kernel still
  ACKs what clients send (into the socket buffers), but nothing is forwarded and nothing
  comes back: keep-alives and ``tcp_user_timeout`` see a healthy peer. ``SIGCONT`` heals.
* **reset**: ``SIGUSR1`` closes every open connection with a zero-linger close (an RST
  to both sides). New connections are accepted as before.
* **latency**: ``--latency-ms N`` delays every chunk going to the server by N ms (bytes
  keep their order), so every round trip takes N ms longer, like ``netem delay`` on one
  interface. ``SIGUSR2`` switches the added latency off and on.

On start it prints ``listening HOST:PORT`` (port 0 picks a free one) and flushes, so a
parent can wait for that line. It logs every reset and connection count to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the proxy process itself imports only the standard library
    from tests.acceptance.conftest import Proc, Processes

CHUNK = 65536


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def _hard_close(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the kernel sends an RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Pair:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def reset(self) -> None:
        _hard_close(self.client)
        _hard_close(self.server)
        for task in self.tasks:
            task.cancel()


class Proxy:
    def __init__(self, target: tuple[str, int], latency_ms: float) -> None:
        self.target = target
        self.latency_s = latency_ms / 1000.0
        self.latency_on = latency_ms > 0
        self.pairs: set[_Pair] = set()
        self.accepted = 0
        self.resets = 0

    def log(self, message: str) -> None:
        sys.stderr.write(f"{time.time():.3f} proxy: {message}\n")
        sys.stderr.flush()

    def reset_all(self) -> None:
        pairs = list(self.pairs)
        self.pairs.clear()
        for pair in pairs:
            pair.reset()
        self.resets += 1
        self.log(f"reset {len(pairs)} connection(s)")

    def toggle_latency(self) -> None:
        self.latency_on = not self.latency_on
        self.log(f"latency {'on' if self.latency_on else 'off'} ({self.latency_s * 1000:.0f} ms)")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError as exc:
            self.log(f"cannot reach {self.target}: {exc}")
            _hard_close(writer)
            return
        pair = _Pair(writer, up_writer)
        self.pairs.add(pair)
        pair.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, delayed=True)),
            asyncio.create_task(self._pump(up_reader, writer, delayed=False)),
        ]
        try:
            await asyncio.wait(pair.tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass  # the proxy is shutting down: end quietly
        finally:
            self.pairs.discard(pair)
            for task in pair.tasks:
                task.cancel()
            for side in (writer, up_writer):
                with contextlib.suppress(Exception):
                    side.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delayed: bool
    ) -> None:
        """Copy until EOF; to the server, each chunk waits out the added latency first
        (a queue keeps chunks in order while the next ones are read)."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        try:
            while True:
                try:
                    data = await reader.read(CHUNK)
                except OSError:
                    data = b""
                delay = self.latency_s if (delayed and self.latency_on) else 0.0
                queue.put_nowait((time.monotonic() + delay, data))
                if not data:
                    break
            await sender
        except (OSError, ConnectionError):
            pass
        finally:
            sender.cancel()


async def serve(listen: tuple[str, int], target: tuple[str, int], latency_ms: float) -> None:
    proxy = Proxy(target, latency_ms)
    server = await asyncio.start_server(proxy.handle, *listen, reuse_address=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, proxy.reset_all)
    loop.add_signal_handler(signal.SIGUSR2, proxy.toggle_latency)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening {host}:{port}", flush=True)
    proxy.log(f"{host}:{port} -> {target[0]}:{target[1]}, latency {latency_ms:.0f} ms")
    async with server:
        await stop.wait()
    proxy.reset_all()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.proxy", description=__doc__)
    parser.add_argument("--listen", type=_address, required=True, help="HOST:PORT (0: any)")
    parser.add_argument("--target", type=_address, required=True, help="HOST:PORT")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added per round trip")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen, args.target, args.latency_ms))


# -- for tests: start one as a process of a test's Processes -----------------------------


def start(
    procs: Processes,
    name: str,
    target: tuple[str, int],
    *,
    latency_ms: float = 0.0,
    timeout: float = 15.0,
) -> tuple[Proc, int]:
    """Start a proxy process (recorded in ``procs``, so only it is ever signalled);
    the process and the port it listens on."""
    from tests.acceptance.conftest import process_env

    args = [sys.executable, "-m", "tests.faults.proxy", "--listen", "127.0.0.1:0"]
    args += ["--target", f"{target[0]}:{target[1]}", "--latency-ms", str(latency_ms)]
    proc = procs.spawn(name, args, process_env())
    deadline = time.monotonic() + timeout
    while True:
        text = proc.stdout_path.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith("listening "):
                return proc, int(line.rsplit(":", 1)[1])
        if not proc.alive() or time.monotonic() > deadline:
            raise AssertionError(f"proxy did not start\n{proc.diagnostics()}")
        time.sleep(0.02)


def via(database_url: str, port: int, host: str = "127.0.0.1") -> str:
    """The same database URL, pointed at the proxy."""
    from sqlalchemy.engine import make_url

    return make_url(database_url).set(host=host, port=port).render_as_string(hide_password=False)


def target_of(database_url: str) -> tuple[str, int]:
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    return url.host or "127.0.0.1", url.port or 5432


if __name__ == "__main__":
    main()
