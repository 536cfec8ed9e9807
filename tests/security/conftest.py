"""Security tests (RELIABILITY.md S1-S15) against real ``conveyor serve`` processes.

Pieces shared by the modules of this directory:

* servers run ``conveyor serve --app tests.security.app:app`` (:data:`APP`), started by
  :func:`tests.servers.start_server` with any settings (an algorithm other than HS256
  drops the shared secret); :class:`Servers` shares the servers that several modules
  use (``hardened``, ``app_server``), started on first use;
* :class:`Target` is a real local HTTP server that counts every connection and every
  byte it sends, standing in for a "public" host, an internal service, or a key server;
* token forging helpers that sign exactly what a test asks (any header, any algorithm,
  even HMAC with a public key);
* :func:`figure` prints a figure for the report (``pytest -s``) and keeps it for the
  summary at the end of the run.

Every server gets its own database (a SQLite file, or a PostgreSQL database created for
it and dropped afterwards), so nothing here shares data with other test directories.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx2 as httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import create_engine, inspect, select, text

from tests.servers import (
    Server,
    backend_database,
    start_server,
    stop_server,
)

API = "/api/v1"
APP = "tests.security.app:app"
SSE = {"Accept": "text/event-stream"}
PROBLEM_JSON = "application/problem+json"
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
#: what no response body may contain (stack traces, driver and SQL internals)
LEAK_MARKERS = (
    "Traceback",
    'File "',
    "sqlalchemy",
    "psycopg",
    "sqlite3",
    "aiosqlite",
    "OperationalError",
    "DataError",
    "[SQL:",
)

# -- figures ------------------------------------------------------------------------------------

FIGURES: list[str] = []


def figure(tag: str, text_: str) -> None:
    """Print one figure of the report (seen with ``pytest -s``) and keep it for the end."""
    line = f"[FIGURE {tag}] {text_}"
    FIGURES.append(line)
    print(f"\n{line}", flush=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Servers here start in seconds on an idle machine but in minutes on a loaded one:
    give this directory's tests (setup included) a longer timeout than the default."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.timeout(600))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("security figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


# -- servers ------------------------------------------------------------------------------------


def new_user(server: Server, role: str = "user") -> tuple[str, str]:
    """(user id, bearer token) of a fresh user."""
    return server.new_user(role)


def client(server: Server, token: str | None = None, **kwargs: Any) -> httpx.Client:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.Client(base_url=server.base, headers=headers, timeout=15.0, **kwargs)


def async_client(server: Server, token: str | None = None) -> httpx.AsyncClient:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.AsyncClient(base_url=server.base, headers=headers, timeout=15.0)


def wait_job(
    http: httpx.Client, job_id: str, statuses: tuple[str, ...], timeout: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = http.get(f"{API}/jobs/{job_id}").json()
        if body.get("status") in statuses:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} never reached {statuses}: {body}")
        time.sleep(0.05)


def leaks(body: str) -> list[str]:
    """The :data:`LEAK_MARKERS` found in a response body."""
    return [marker for marker in LEAK_MARKERS if marker in body]


def process_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB, from /proc."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0])
    return found


def dump_database(database_url: str) -> dict[str, str]:
    """Every row of every table as text, per table (to search for a canary)."""
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        tables = inspect(engine).get_table_names()
        dumped: dict[str, str] = {}
        with engine.connect() as conn:
            for name in tables:
                rows = conn.execute(select(text("*")).select_from(text(f'"{name}"'))).all()
                dumped[name] = "\n".join(repr(tuple(r)) for r in rows)
        return dumped
    finally:
        engine.dispose()


# -- local HTTP targets (S10, key URLs of S3) ---------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _CountingServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.server.target.sent(len(body))

    def do_GET(self) -> None:
        target = self.server.target
        parsed = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        target.requests.append(self.path)
        path = parsed.path
        if path == "/redirect":
            status = int(query.get("status", "302"))
            self._send(status, b"", {"Location": query["to"]})
        elif path == "/loop":
            self._send(302, b"", {"Location": "/loop"})
        elif path == "/size":
            self._send(200, b"x" * int(query["n"]))
        elif path == "/endless":
            self._endless()
        elif path == "/slow":
            time.sleep(float(query.get("s", "5")))
            self._send(200, b"late")
        elif path == "/host":
            self._send(200, (self.headers.get("Host") or "").encode())
        elif path == "/jwks.json":
            self._send(200, target.jwks.encode(), {"Content-Type": "application/json"})
        else:
            self._send(200, f"{target.name} says hello".encode())

    do_POST = do_GET

    def _endless(self) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"y" * 65536
        framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        try:
            for _ in range(4096):  # at most 256 MiB, then give up
                self.wfile.write(framed)
                self.server.target.sent(len(chunk))
        except OSError:
            pass  # the client hung up: what it should do


class _CountingServer(ThreadingHTTPServer):
    daemon_threads = True
    target: Target

    def get_request(self) -> tuple[socket.socket, Any]:
        accepted = super().get_request()
        self.target.connections += 1
        return accepted


class _CountingServer6(_CountingServer):
    address_family = socket.AF_INET6


@dataclass
class Target:
    """A local HTTP server that records connections, requests and bytes sent."""

    name: str
    host: str
    port: int = 0
    connections: int = 0
    bytes_sent: int = 0
    requests: list[str] = field(default_factory=list)
    jwks: str = '{"keys": []}'
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def sent(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n

    @property
    def authority(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def url(self, path: str = "/") -> str:
        return f"http://{self.authority}{path}"

    def snapshot(self) -> tuple[int, int, int]:
        return self.connections, len(self.requests), self.bytes_sent


@contextlib.contextmanager
def serve_target(name: str, host: str = "127.0.0.1") -> Iterator[Target]:
    target = Target(name, host)
    cls = _CountingServer6 if ":" in host else _CountingServer
    httpd = cls((host, 0), _Handler)
    httpd.target = target
    target.port = int(httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, name=f"target-{name}", daemon=True)
    thread.start()
    try:
        yield target
    finally:
        httpd.shutdown()
        httpd.server_close()


@dataclass
class Targets:
    public: Target  # stands in for a public host (allowed by SafeHttp(allow=...))
    internal: Target  # an internal service on 127.0.0.1 that must never be reached
    internal6: Target  # the same on [::1]

    @property
    def blocked(self) -> list[Target]:
        return [self.internal, self.internal6]

    def blocked_traffic(self) -> tuple[int, int]:
        """(connections, bytes sent) of the blocked targets so far."""
        return (
            sum(t.connections for t in self.blocked),
            sum(t.bytes_sent for t in self.blocked),
        )


@pytest.fixture(scope="package")
def targets() -> Iterator[Targets]:
    with (
        serve_target("public") as public,
        serve_target("internal") as internal,
        serve_target("internal6", "::1") as internal6,
    ):
        yield Targets(public, internal, internal6)


# -- servers shared by several modules ----------------------------------------------------------

CORS_ORIGIN = "https://ok.example"
WAITING_CAP = 5
STREAM_MAX_LIFETIME_S = 2.0
HTTP_MAX_BYTES = 4096
STREAM_RECHECK_S = 1.0


class Servers:
    """The shared servers of this directory, started on first use (one per kind and
    backend, whichever fixture asks) and stopped when the directory's tests are done."""

    def __init__(self, tmp: Path, targets: Targets, keys: KeyPair) -> None:
        self.tmp = tmp
        self.targets = targets
        self.keys = keys
        self.running: dict[tuple[str, str], Server] = {}
        self.stack = contextlib.ExitStack()

    def get(self, request: pytest.FixtureRequest, kind: str, backend: str) -> Server:
        found = self.running.get((kind, backend))
        if found is None:
            tmp = self.tmp / f"{kind}-{backend}"
            tmp.mkdir()
            url = self.stack.enter_context(
                backend_database(request, backend, tmp, label="security")
            )
            found = start_server(url, tmp, app=APP, **self.settings(kind, tmp))
            self.stack.callback(stop_server, found)
            self.running[(kind, backend)] = found
        return found

    def settings(self, kind: str, tmp: Path) -> dict[str, Any]:
        if kind == "hardened":
            return {
                "workers": 0,
                "extra_env": {
                    "CONVEYOR_MAX_WAITING_JOBS_PER_USER": str(WAITING_CAP),
                    "CONVEYOR_CORS_ORIGINS": json.dumps([CORS_ORIGIN]),
                    "CONVEYOR_DOCS_ENABLED": "false",
                    "CONVEYOR_STREAM_MAX_LIFETIME_S": str(STREAM_MAX_LIFETIME_S),
                },
            }
        private, public = tmp / "private.pem", tmp / "public.pem"
        private.write_text(self.keys.private_pem)
        public.write_text(self.keys.public_pem)
        return {
            "workers": 3,
            "extra_env": {
                "CONVEYOR_JWT_ALGORITHM": "RS256",
                "CONVEYOR_JWT_PRIVATE_KEY": f"@{private}",
                "CONVEYOR_JWT_PUBLIC_KEY": f"@{public}",
                "CONVEYOR_JWT_LEEWAY_S": "0",
                "CONVEYOR_STREAM_RECHECK_S": str(STREAM_RECHECK_S),
                "CONVEYOR_HTTP_ALLOW": json.dumps([self.targets.public.authority]),
                "CONVEYOR_HTTP_MAX_BYTES": str(HTTP_MAX_BYTES),
                "CONVEYOR_HTTP_TIMEOUT_S": "3",
            },
        }


@pytest.fixture(scope="package")
def server_keys() -> KeyPair:
    """The RSA key pair of :func:`app_server` (which signs its tokens with RS256)."""
    return rsa_pair()


@pytest.fixture(scope="package")
def servers(
    tmp_path_factory: pytest.TempPathFactory, targets: Targets, server_keys: KeyPair
) -> Iterator[Servers]:
    started = Servers(tmp_path_factory.mktemp("servers"), targets, server_keys)
    with started.stack:
        yield started


@pytest.fixture(params=BACKENDS)
def hardened(request: pytest.FixtureRequest, servers: Servers) -> Server:
    """API-only (``--workers 0``, so jobs stay queued), a waiting-jobs cap of
    :data:`WAITING_CAP` per user, one CORS origin, no docs, streams capped at
    :data:`STREAM_MAX_LIFETIME_S`: the production posture (HS256 with a set secret).
    On both backends; :func:`hardened_sqlite` is the same SQLite server."""
    return servers.get(request, "hardened", str(request.param))


@pytest.fixture
def hardened_sqlite(request: pytest.FixtureRequest, servers: Servers) -> Server:
    return servers.get(request, "hardened", "sqlite")


@pytest.fixture(params=BACKENDS)
def app_server(request: pytest.FixtureRequest, servers: Servers) -> Server:
    """Embedded workers; tokens signed with RS256 by :func:`server_keys` (no leeway);
    streams re-check their caller every :data:`STREAM_RECHECK_S`; ``ctx.http`` may
    reach the ``public`` target only and reads at most :data:`HTTP_MAX_BYTES`; docs on
    and no CORS (the defaults). On both backends; :func:`app_sqlite` is the same
    SQLite server."""
    return servers.get(request, "app", str(request.param))


@pytest.fixture
def app_sqlite(request: pytest.FixtureRequest, servers: Servers) -> Server:
    return servers.get(request, "app", "sqlite")


# -- keys and tokens ----------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey

    @property
    def private_pem(self) -> str:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    @property
    def public_pem(self) -> str:
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    @property
    def public_der(self) -> bytes:
        return bytes(
            self.public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def public_jwk(self, **extra: Any) -> dict[str, Any]:
        algorithm = "RS256" if isinstance(self.public, rsa.RSAPublicKey) else "ES256"
        jwk: dict[str, Any] = json.loads(jwt.get_algorithm_by_name(algorithm).to_jwk(self.public))
        return {**jwk, **extra}


def rsa_pair() -> KeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return KeyPair(key, key.public_key())


def ec_pair() -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    return KeyPair(key, key.public_key())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: Mapping[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def hmac_token(
    secret: bytes,
    payload: Mapping[str, Any],
    alg: str = "HS256",
    *,
    raw_header: Mapping[str, Any] | None = None,
    **header: Any,
) -> str:
    """A token HMAC-signed with ``secret`` whatever it is (PyJWT refuses to sign with a
    PEM key as an HMAC secret; an attacker does not ask PyJWT). The header is
    ``{"alg": alg, "typ": "JWT", **header}``, or ``raw_header`` verbatim."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    shown = raw_header if raw_header is not None else {"alg": alg, "typ": "JWT", **header}
    signing_input = f"{_segment(shown)}.{_segment(payload)}"
    signature = hmac.new(secret, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64url(signature)}"


def signed_token(
    private_key: Any,
    payload: Mapping[str, Any],
    alg: str = "RS256",
    *,
    raw_header: Mapping[str, Any] | None = None,
    **header: Any,
) -> str:
    """A token signed with ``private_key`` by ``alg``; the header is exactly
    ``{"alg": alg, "typ": "JWT", **header}`` (any ``kid``, ``jwk``, ``jku``...), or
    ``raw_header`` verbatim (an ``alg`` that does not say what signed it)."""
    algorithm = jwt.get_algorithm_by_name(alg)
    shown = raw_header if raw_header is not None else {"alg": alg, "typ": "JWT", **header}
    signing_input = f"{_segment(shown)}.{_segment(payload)}"
    signature = algorithm.sign(signing_input.encode(), private_key)
    return f"{signing_input}.{b64url(signature)}"


def unsigned_token(payload: Mapping[str, Any], alg: str = "none", **header: Any) -> str:
    return f"{_segment({'alg': alg, 'typ': 'JWT', **header})}.{_segment(payload)}."


# -- streams ------------------------------------------------------------------------------------


def sse_transcript(server: Server, token: str | None, path: str, timeout: float = 15.0) -> str:
    """The raw text of an event stream, read until the server ends it."""
    chunks: list[str] = []
    deadline = time.monotonic() + timeout
    with (
        client(server, token) as http,
        http.stream("GET", path, headers=SSE, timeout=timeout) as response,
    ):
        assert response.status_code == 200, response.read().decode(errors="replace")
        for chunk in response.iter_text():
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise AssertionError(f"the stream {path} did not end within {timeout}s")
    return "".join(chunks)
