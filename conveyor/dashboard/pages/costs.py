"""LLM cost and tokens: per day, per workflow and per model, as server-rendered SVG."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from conveyor.api.deps import api_state
from conveyor.dashboard import listing
from conveyor.dashboard.charts import Chart, chart, short_count, short_usd
from conveyor.dashboard.web import PageRoute, SessionDep, render

router = APIRouter(route_class=PageRoute, include_in_schema=False)
TOKENS = ["input tokens", "output tokens"]


def _cost(row: dict[str, Any]) -> list[float]:
    return [float(row.get("cost_usd") or 0.0)]


def _tokens(row: dict[str, Any]) -> list[float]:
    return [float(row.get("input_tokens") or 0), float(row.get("output_tokens") or 0)]


def charts(summary: dict[str, Any]) -> list[Chart]:
    """The page's charts from a telemetry summary."""
    days = summary["by_day"]
    workflows = summary["by_workflow"]
    models = summary["by_model"]

    def workflow_name(row: dict[str, Any]) -> str:
        return str(row.get("workflow") or "(standalone jobs)")

    def model_name(row: dict[str, Any]) -> str:
        return f"{row.get('provider')}/{row.get('model')}"

    return [
        chart(
            "Cost per day (USD)",
            [(str(d["day"])[5:], _cost(d)) for d in days],
            series=["cost"],
            fmt=short_usd,
            orientation="columns",
        ),
        chart(
            "Tokens per day",
            [(str(d["day"])[5:], _tokens(d)) for d in days],
            series=TOKENS,
            fmt=short_count,
            orientation="columns",
        ),
        chart(
            "Cost per workflow (USD)",
            [(workflow_name(w), _cost(w)) for w in workflows],
            series=["cost"],
            fmt=short_usd,
        ),
        chart(
            "Tokens per workflow",
            [(workflow_name(w), _tokens(w)) for w in workflows],
            series=TOKENS,
            fmt=short_count,
        ),
        chart(
            "Cost per model (USD)",
            [(model_name(m), _cost(m)) for m in models],
            series=["cost"],
            fmt=short_usd,
        ),
        chart(
            "Tokens per model",
            [(model_name(m), _tokens(m)) for m in models],
            series=TOKENS,
            fmt=short_count,
        ),
    ]


@router.get("/costs")
async def costs_page(
    request: Request,
    session: SessionDep,
    date_from: Annotated[str | None, Query(alias="from", max_length=10)] = None,
    date_to: Annotated[str | None, Query(alias="to", max_length=10)] = None,
) -> Response:
    """The caller's usage (everyone's for an admin), optionally within dates."""
    filters = {"from": listing.text(date_from), "to": listing.text(date_to)}
    summary = await api_state(request).engine.telemetry_summary(
        owner=session.scope,
        start=listing.day_start(filters["from"]),
        end=listing.day_end(filters["to"]),
    )
    return render(
        "costs.html",
        session=session,
        request=request,
        nav="costs",
        summary=summary,
        charts=charts(summary),
        filters=filters,
    )
