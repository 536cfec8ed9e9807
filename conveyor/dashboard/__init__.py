"""The web dashboard: server-rendered pages (Jinja2, vendored htmx) over the same engine
as the API, mounted by ``conveyor serve`` at ``/`` with its static files at ``/static``.

It calls the engine directly (never the HTTP API), with the same ownership rules: a
signed-in user sees their own items, an admin sees everything.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.staticfiles import StaticFiles

from conveyor.dashboard.pages import (
    auth,
    clarifications,
    costs,
    documents,
    executions,
    fleet,
    jobs,
    start,
)

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PATH = "/static"

router = APIRouter(include_in_schema=False)
for _module in (auth, executions, start, clarifications, jobs, fleet, documents, costs):
    router.include_router(_module.router)


def static_files() -> StaticFiles:
    """The vendored htmx, the dashboard's script and its stylesheet."""
    return StaticFiles(directory=STATIC_DIR)


__all__ = ["STATIC_PATH", "router", "static_files"]
