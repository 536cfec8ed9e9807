"""What every command shares: settings, loading the app, errors, output."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console

from conveyor.app import Conveyor
from conveyor.errors import (
    AuthenticationError,
    ConfigurationError,
    ConflictError,
    ConveyorError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    ServiceUnavailableError,
    StoreUnavailableError,
)
from conveyor.settings import Settings
from conveyor.store.url import redact

T = TypeVar("T")

console = Console()
# messages are never wrapped mid-sentence when stderr is a pipe or a log file
err_console = Console(stderr=True, soft_wrap=True)

EXIT_CODES: list[tuple[type[ConveyorError], int]] = [
    (InvalidInputError, 2),
    (NotFoundError, 3),
    (ConflictError, 4),
    (ServiceUnavailableError, 5),
    (AuthenticationError, 6),
    (PermissionDeniedError, 6),
    (ConfigurationError, 7),
]


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def exit_code_for(exc: ConveyorError) -> int:
    for kind, code in EXIT_CODES:
        if isinstance(exc, kind):
            return code
    return 1


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; turn Conveyor errors into a message and an exit code."""
    try:
        return asyncio.run(coro)
    except ConveyorError as exc:
        message = exc.message
        for detail in exc.details:
            loc = ".".join(str(p) for p in detail.get("loc", ()))
            message += f"\n  {loc}: {detail.get('msg')}" if loc else f"\n  {detail.get('msg')}"
        fail(message, exit_code_for(exc))
    except KeyboardInterrupt:
        fail("interrupted", 130)


def settings_from(database_url: str | None = None, app: str | None = None) -> Settings:
    overrides: dict[str, Any] = {}
    if database_url:
        overrides["database_url"] = database_url
    if app:
        overrides["app"] = app
    try:
        return Settings(**overrides)
    except Exception as exc:  # pydantic's ValidationError from a bad environment variable
        fail(f"bad settings: {exc}", 7)


def load_app(spec: str | None) -> Conveyor:
    """Import ``module:attribute`` (the current directory is importable)."""
    if not spec:
        fail("no app given: use --app module:attribute or set CONVEYOR_APP", 2)
    module_name, _, attribute = spec.partition(":")
    attribute = attribute or "app"
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        fail(f"cannot import {module_name!r} for --app {spec!r}: {exc}", 2)
    except ConveyorError as exc:
        fail(f"the app in {module_name!r} is invalid: {exc.message}", 2)
    app = getattr(module, attribute, None)
    if not isinstance(app, Conveyor):
        fail(f"{spec!r} is not a Conveyor app (found {type(app).__name__})", 2)
    return app


def parse_json(text: str | None, what: str = "input") -> Any:
    """JSON from the command line, or ``@path`` to read it from a file."""
    if text is None:
        return None
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            fail(f"cannot read {what} file: {exc}", 2)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{what} is not valid JSON: {exc}", 2)


def print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


def print_page(
    page: dict[str, Any], table: Callable[[list[dict[str, Any]]], Any], as_json: bool
) -> None:
    """A list page: as JSON, or as a table followed by how to get the next page."""
    if as_json:
        print_json(page)
        return
    console.print(table(page["items"]))
    if page["next_cursor"]:
        console.print(f"next page: --cursor {page['next_cursor']}", style="dim")


async def with_engine(
    settings: Settings, app: Conveyor | None, body: Callable[[Any], Awaitable[T]]
) -> T:
    """Open the database (applying migrations), run ``body(engine)``, close."""
    from conveyor.runtime import Runtime

    runtime = Runtime(app or Conveyor(), settings)
    try:
        engine = await runtime.open()
    except StoreUnavailableError as exc:
        raise StoreUnavailableError(
            f"cannot use database {redact(settings.database_url)}: {exc.message}"
        ) from exc
    if app is None:
        engine.catalog = None  # no app given: any task name is accepted
    try:
        return await body(engine)
    finally:
        await runtime.close()
