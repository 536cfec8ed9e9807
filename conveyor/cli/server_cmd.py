"""``conveyor serve``, ``conveyor users``, ``conveyor token``."""

from __future__ import annotations

import contextlib
import getpass
import socket
from typing import Annotated

import typer

from conveyor.auth.users import Accounts, LoginLimiter
from conveyor.cli.common import console, fail, load_app, print_json, run, settings_from
from conveyor.logs import configure_logging
from conveyor.runtime import Runtime

users_app = typer.Typer(help="Built-in users of the API.", no_args_is_help=True)


def serve(
    app_spec: Annotated[
        str | None, typer.Option("--app", "-a", help="module:attribute of your Conveyor app.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[
        int,
        typer.Option(min=0, max=10_000, help="Embedded worker slots (0: an API-only replica)."),
    ] = 4,
    queues: Annotated[
        str | None, typer.Option("--queues", "-q", help="Queues of the embedded worker.")
    ] = None,
    database_url: Annotated[
        str | None, typer.Option("--database-url", "-d", help="Database URL.")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Run the HTTP API (and an embedded worker) for an app; migrations are applied on start."""
    import uvicorn

    from conveyor.api.app import create_app
    from conveyor.store.url import backend_of, redact

    settings = settings_from(database_url, app_spec)
    conveyor_app = load_app(settings.app)
    try:
        backend_of(settings.database_url)
    except Exception as exc:
        fail(str(exc), 7)
    configure_logging(log_level)
    queue_list = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    api = create_app(conveyor_app, settings, worker_concurrency=workers, worker_queues=queue_list)
    console.print(
        f"Conveyor on http://{host}:{port}  (database {redact(settings.database_url)}, "
        f"{workers} embedded worker slot(s); API docs at /docs)",
        highlight=False,
    )
    config = uvicorn.Config(
        api,
        host=host,
        port=port,
        access_log=False,
        log_level=log_level.lower(),
        timeout_graceful_shutdown=int(settings.drain_timeout_s) + 5,
        server_header=False,
    )
    listener = config.bind_socket()
    abort_stalled_peers(listener, settings.stream_send_timeout_s)
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[listener])
    if not server.started:
        raise typer.Exit(3)  # uvicorn's "startup failed"


def abort_stalled_peers(listener: socket.socket, timeout_s: float) -> None:
    """Have the kernel abort a connection whose peer takes no data for ``timeout_s``.

    A stream's send timeout ends the stream, but the ASGI server then closes the
    connection gracefully: it keeps the unsent bytes and the socket until the peer reads
    them, that is forever for a client that stopped reading. ``TCP_USER_TIMEOUT`` (set
    on the listener, inherited by every accepted connection) also covers data held back
    by a zero window, so such a connection is reset instead of lingering.
    """
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is None or listener.family not in (socket.AF_INET, socket.AF_INET6):
        return  # not Linux, or a Unix socket
    listener.setsockopt(socket.IPPROTO_TCP, option, max(1, round(timeout_s * 1000)))


async def _accounts(database_url: str | None) -> tuple[Runtime, Accounts]:
    from conveyor.api.app import token_service
    from conveyor.app import Conveyor

    settings = settings_from(database_url)
    runtime = Runtime(Conveyor(), settings)
    await runtime.open()
    tokens = await token_service(settings, runtime)
    return runtime, Accounts(runtime.engine.db, tokens, LoginLimiter())


@users_app.command("create")
def users_create(
    username: str,
    role: Annotated[
        list[str], typer.Option("--role", "-r", help="admin, user or worker (repeatable).")
    ] = ["user"],  # noqa: B006 - Typer reads the default
    password: Annotated[
        str | None, typer.Option(help="Password (prompted when omitted; env is safer).")
    ] = None,
    database_url: Annotated[str | None, typer.Option("--database-url", "-d")] = None,
) -> None:
    """Create a built-in user."""
    secret = password or getpass.getpass(f"password for {username}: ")

    async def go() -> dict[str, object]:
        runtime, accounts = await _accounts(database_url)
        try:
            user = await accounts.create_user(username, secret, list(role))
            created: dict[str, object] = user.to_json()
            return created
        finally:
            await runtime.close()

    print_json(run(go()))


@users_app.command("list")
def users_list(
    database_url: Annotated[str | None, typer.Option("--database-url", "-d")] = None,
) -> None:
    """List built-in users."""

    async def go() -> list[dict[str, object]]:
        runtime, accounts = await _accounts(database_url)
        try:
            return [u.to_json() for u in await accounts.list_users()]
        finally:
            await runtime.close()

    print_json(run(go()))


def token(
    username: Annotated[str, typer.Argument(help="An existing built-in user.")],
    ttl: Annotated[int | None, typer.Option(help="Lifetime in seconds.")] = None,
    database_url: Annotated[str | None, typer.Option("--database-url", "-d")] = None,
) -> None:
    """Print a bearer token for a user (for scripts; needs access to the database)."""
    from conveyor.errors import NotFoundError

    async def go() -> str:
        runtime, accounts = await _accounts(database_url)
        try:
            user = await accounts.find_user(username)
            if user is None or user.disabled:
                raise NotFoundError(f"no active user {username!r}")
            issued, _ = accounts.tokens.issue(
                user.id, username=user.username, roles=user.roles, ttl_s=ttl
            )
            return str(issued)
        finally:
            await runtime.close()

    typer.echo(run(go()))
