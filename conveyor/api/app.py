"""The FastAPI application: routers, errors, middleware, and the process lifecycle
(migrations, first admin, embedded workers)."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy import text

from conveyor.api import errors
from conveyor.api.errors import problem
from conveyor.api.metrics import CONTENT_TYPE, Metrics
from conveyor.api.middleware import AccessLog, BodyLimit, NulGuard, SecurityHeaders
from conveyor.api.openapi import build_openapi
from conveyor.api.routers import auth, documents, executions, jobs, system
from conveyor.api.routers import streams as streams_router
from conveyor.api.routers.common import API_PREFIX
from conveyor.api.state import ApiState
from conveyor.app import Conveyor
from conveyor.auth.tickets import StreamTickets
from conveyor.auth.tokens import TokenPolicy, TokenService
from conveyor.auth.users import Accounts, LoginLimiter
from conveyor.dashboard import STATIC_PATH, static_files
from conveyor.dashboard import router as dashboard_router
from conveyor.errors import ConveyorError
from conveyor.events.hub import EventHub
from conveyor.runtime import Runtime
from conveyor.settings import Settings
from conveyor.store.secrets import shared_secret

log = logging.getLogger("conveyor.api")

TAGS = [
    {"name": "auth", "description": "Tokens and the current user."},
    {"name": "users", "description": "Built-in users (admin only)."},
    {"name": "jobs", "description": "Single task runs."},
    {"name": "workflows", "description": "The workflows the server's app defines."},
    {"name": "executions", "description": "Runs of workflows, stage runs, questions."},
    {"name": "clarifications", "description": "Questions steps asked a human."},
    {"name": "workers", "description": "Built-in and external workers."},
    {"name": "queues", "description": "Queue statistics and control."},
    {"name": "documents", "description": "Versioned artifacts saved by steps."},
    {"name": "telemetry", "description": "LLM usage and cost."},
    {"name": "streams", "description": "Stream tickets and the WebSocket."},
    {"name": "health", "description": "Liveness, readiness and metrics."},
]


async def token_service(settings: Settings, runtime: Runtime) -> TokenService:
    policy = TokenPolicy(
        algorithm=settings.jwt_algorithm,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        ttl_s=settings.token_ttl_s,
        max_lifetime_s=settings.token_max_lifetime_s,
        leeway_s=settings.jwt_leeway_s,
    )
    # Every configured key material goes to TokenService, which refuses a mix of HMAC and
    # public-key settings: silently ignoring one of them would hide a misconfiguration.
    secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
    private_key = settings.jwt_private_key.get_secret_value() if settings.jwt_private_key else None
    if settings.jwt_algorithm == "HS256" and secret is None:
        log.warning(
            "no CONVEYOR_JWT_SECRET set: using a secret generated once and kept in the "
            "database (set one for production)"
        )
        secret = await shared_secret(runtime.engine.db, "jwt_hs256")
    return TokenService(
        policy,
        secret=secret,
        private_key=private_key,
        public_key=settings.jwt_public_key,
        jwks=settings.jwt_jwks,
    )


def create_app(
    conveyor_app: Conveyor,
    settings: Settings | None = None,
    *,
    worker_concurrency: int = 4,
    worker_queues: list[str] | None = None,
) -> FastAPI:
    """The API (and, unless ``worker_concurrency`` is 0, an embedded worker) for an app."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(conveyor_app, settings)
        engine = await runtime.open()
        tokens = await token_service(settings, runtime)
        accounts = Accounts(
            engine.db,
            tokens,
            LoginLimiter(settings.login_max_failures, settings.login_window_s),
        )
        created = await accounts.bootstrap_admin(
            settings.admin_username,
            settings.admin_password.get_secret_value() if settings.admin_password else None,
        )
        if created is not None:
            # shown once, on the console only: never through the logging system
            print(
                f"\nCreated the first admin user: {created[0]} / password: {created[1]}\n"
                "Keep it now; it is not shown again.\n",
                file=sys.stderr,
                flush=True,
            )
        hub = EventHub(
            engine.db,
            poll_s=settings.events_poll_s,
            subscriber_capacity=settings.stream_buffer_events,
            max_per_owner=settings.max_streams_per_user,
        )
        await hub.start()
        state = ApiState(
            settings,
            conveyor_app,
            runtime,
            engine,
            accounts,
            hub,
            StreamTickets(engine.db),
            metrics=metrics,
        )
        api.state.conveyor = state
        metrics.start(engine)
        if worker_concurrency > 0:
            worker = runtime.worker(
                concurrency=worker_concurrency, queues=worker_queues, kind="embedded"
            )
            await worker.start()
            state.workers.append(worker)
        try:
            yield
        finally:
            for worker in state.workers:
                await worker.stop()
            await hub.stop()
            await metrics.stop()
            await runtime.close()

    api = FastAPI(
        title="Conveyor API",
        version="1",
        description="Durable jobs and workflows for AI-agent pipelines.",
        openapi_tags=TAGS,
        lifespan=lifespan,
        docs_url="/docs" if settings.docs_enabled else None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
    )
    errors.install(api)
    for router in (
        auth.router,
        jobs.router,
        executions.workflows,
        executions.executions,
        executions.clarifications,
        streams_router.router,
        documents.documents,
        documents.telemetry,
        system.workers,
        system.queues,
        system.health,
    ):
        api.include_router(router, prefix=API_PREFIX)
    # the web dashboard: HTML pages at / (outside the OpenAPI document), static files
    api.include_router(dashboard_router)
    api.mount(STATIC_PATH, static_files(), name="dashboard-static")

    @api.get("/healthz", tags=["health"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get(
        "/readyz",
        tags=["health"],
        summary="The database is reachable",
        responses=errors.problem_responses(503),
    )
    async def readyz(request: Request) -> Any:
        state: ApiState = request.app.state.conveyor
        try:
            await state.engine.db.read(lambda c: c.execute(text("SELECT 1")).scalar())
        except ConveyorError as exc:
            return problem(
                503, f"database unavailable: {exc.message}", headers={"Retry-After": "5"}
            )
        return {"status": "ready"}

    @api.get(
        "/metrics",
        tags=["health"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}},
    )
    async def prometheus(request: Request) -> Response:
        if not settings.metrics_public:
            from conveyor.api.deps import admin, bearer, principal

            credentials = await bearer(request)
            await admin(await principal(request, credentials))
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    def openapi() -> dict[str, Any]:
        if not api.openapi_schema:
            api.openapi_schema = build_openapi(api, conveyor_app, TAGS)
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]

    api.add_middleware(AccessLog, metrics=metrics)
    if settings.cors_origins:
        api.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "If-Match"],
        )
    api.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    api.add_middleware(NulGuard)
    # outermost, so the answers of the middleware above carry the headers too
    api.add_middleware(SecurityHeaders)
    return api
