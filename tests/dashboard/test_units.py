"""The dashboard's pure parts: schema forms, DAG layout, charts, diffs, throughput,
escaping, and the script's list of event types."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conveyor.dashboard import STATIC_PATH, charts, dag, diff
from conveyor.dashboard.forms import (
    attach_errors,
    fields_for_object,
    fields_for_questions,
    read_fields,
)
from conveyor.dashboard.session import safe_next, sign, tokens_match
from conveyor.dashboard.templating import ENVIRONMENT, pretty_json, status_class
from conveyor.dashboard.throughput import ThroughputMeter
from conveyor.domain.events import EventType
from examples.app import app as examples

STATIC = Path(__file__).resolve().parents[2] / "conveyor" / "dashboard" / "static"


def test_fields_follow_the_research_input_schema() -> None:
    controls = fields_for_object(examples.tasks["refine_question"].input_schema())
    assert controls is not None
    by_name = {c.name: c for c in controls}
    assert list(by_name) == ["question", "focus", "audience"]
    assert by_name["question"].required and by_name["question"].kind == "text"
    # `str | None = None` is an optional text field, not a JSON one
    assert not by_name["focus"].required and by_name["focus"].kind == "text"


def test_fields_cover_numbers_booleans_enums_and_json() -> None:
    schema = {
        "type": "object",
        "properties": {
            "count": {"type": "integer", "default": 100, "minimum": 1},
            "ratio": {"type": "number"},
            "loud": {"type": "boolean"},
            "mode": {"enum": ["fast", "slow", 3]},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["count"],
    }
    controls = fields_for_object(schema)
    assert controls is not None
    kinds = {c.name: c.kind for c in controls}
    assert kinds == {
        "count": "integer",
        "ratio": "number",
        "loud": "boolean",
        "mode": "select",
        "tags": "json",
    }
    assert controls[0].value == "100" and controls[0].hint == ">= 1"
    form = {
        "in.count": "7",
        "in.ratio": "0.5",
        "in.loud": "true",
        "in.mode": "3",
        "in.tags": '["a"]',
    }
    values, ok = read_fields(controls, form)
    assert ok
    assert values == {"count": 7, "ratio": 0.5, "loud": True, "mode": 3, "tags": ["a"]}
    values, ok = read_fields(controls, {"in.count": "many", "in.tags": "[", "in.mode": "x"})
    assert not ok
    errors = {c.name: c.errors for c in controls if c.errors}
    assert errors == {
        "count": ["must be a whole number"],
        "mode": ["choose one of the options"],
        "tags": ["not valid JSON (Expecting value)"],
    }
    assert controls[0].value == "many"  # what was typed stays in the form
    assert fields_for_object({"type": "string"}) is None


def test_question_fields_and_their_errors() -> None:
    questions = [
        {"id": "focus", "text": "Which aspect?", "schema": {"type": "string", "minLength": 3}},
        {
            "id": "audience",
            "text": "Who reads it?",
            "schema": {"type": "string", "enum": ["general", "expert"]},
            "default": "general",
        },
    ]
    controls = fields_for_questions(questions)
    assert [c.label for c in controls] == ["Which aspect?", "Who reads it?"]
    assert controls[0].required and not controls[1].required
    assert controls[1].value == "general" and controls[1].kind == "select"
    general = attach_errors(
        controls,
        [
            {"loc": ["focus"], "msg": "'ab' is too short"},
            {"loc": ["audience", "x"], "msg": "odd"},
            {"loc": ["nope"], "msg": "no such question"},
        ],
    )
    assert controls[0].errors == ["'ab' is too short"]
    assert controls[1].errors == ["x: odd"]
    assert general == ["nope: no such question"]


def test_dag_layout_puts_steps_in_columns_by_depth() -> None:
    steps = [
        dag.StepNode("fetch", [], "completed", 100),
        *[dag.StepNode(f"chunk_{i}", ["fetch"], "active", 40) for i in range(4)],
        dag.StepNode("merge", [f"chunk_{i}" for i in range(4)], "pending"),
    ]
    layout = dag.layout(steps)
    assert layout is not None
    x = {n.step_id: n.x for n in layout.nodes}
    assert x["fetch"] < x["chunk_0"] == x["chunk_3"] < x["merge"]
    assert len(layout.edges) == 8
    assert sum(e.done for e in layout.edges) == 4  # the edges out of the completed fetch
    assert layout.width == 2 * dag.PAD + 3 * dag.NODE_W + 2 * dag.GAP_X
    chunk = next(n for n in layout.nodes if n.step_id == "chunk_0")
    assert chunk.bar_width == round((dag.NODE_W - 2 * dag.PAD) * 0.4)
    long = dag.layout([dag.StepNode("x" * 40, [], "queued")])
    assert long is not None and long.nodes[0].label.endswith("…")
    assert dag.layout([]) is None
    assert (
        dag.layout([dag.StepNode(str(i), [], "queued") for i in range(dag.MAX_NODES + 1)]) is None
    )


def test_charts_scale_to_a_round_maximum() -> None:
    assert charts.nice_max(0) == 1.0
    assert charts.nice_max(0.000169) == pytest.approx(0.0002)
    assert charts.nice_max(252) == 500
    assert charts.nice_max(1000) == 1000
    columns = charts.chart(
        "Tokens",
        [("11-23", [100, 50]), ("11-24", [200, 52])],
        series=["in", "out"],
        fmt=charts.short_count,
        orientation="columns",
    )
    assert columns.ticks[-1].text == "500"
    tallest = columns.bars[1]
    assert sum(s.height for s in tallest.segments) == pytest.approx(
        charts.COLUMN_AREA_H * 252 / 500
    )
    assert tallest.value_text == "252"
    rows = charts.chart(
        "Cost", [("research", [0.5]), ("data", [1.0])], series=["cost"], fmt=charts.short_usd
    )
    assert rows.bars[0].segments[0].width == pytest.approx(
        (charts.WIDTH - charts.VALUE_W - charts.LABEL_W) * 0.5
    )
    assert charts.short_usd(0.000169) == "$0.00017"
    assert charts.short_usd(12.5) == "$12.50"
    assert charts.short_count(25_000) == "25k"
    assert charts.chart("x", [], series=["a"], fmt=str).empty


def test_diff_of_text_and_of_json() -> None:
    lines = diff.unified("a\nb\nc\n", "a\nB\nc\nd\n")
    assert lines is not None
    kinds = [(line.kind, line.text) for line in lines]
    assert ("del", "b") in kinds and ("add", "B") in kinds and ("add", "d") in kinds
    added = next(line for line in lines if line.text == "d")
    assert added.new_no == 4 and added.old_no is None
    assert diff.unified({"a": 1}, {"a": 1}) == []
    changed = diff.unified({"a": 1, "b": [1]}, {"a": 2, "b": [1]})
    assert changed is not None
    assert [line.text for line in changed if line.kind == "add"] == ['  "a": 2,']


def test_throughput_from_successive_counts() -> None:
    meter = ThroughputMeter()
    assert meter.observe("q", 10, now=100.0) is None  # nothing to compare with yet
    assert meter.observe("q", 20, now=100.5) is None  # too close together
    assert meter.observe("q", 30, now=102.0) == pytest.approx(10.0)
    assert meter.observe("q", 0, now=103.0) is None  # a clean-up: start over
    assert meter.observe("other", 5, now=103.0) is None


def test_only_local_paths_are_followed_after_sign_in() -> None:
    assert safe_next("/executions/abc?x=1") == "/executions/abc?x=1"
    for hostile in ("//evil.example", "https://evil.example", "/\\evil", "javascript:x", None, ""):
        assert safe_next(hostile) == "/executions"


def test_csrf_tokens_are_bound_to_their_session() -> None:
    key = b"k" * 32
    token = sign(key, "session-a")
    assert tokens_match(token, sign(key, "session-a"))
    assert not tokens_match(token, sign(key, "session-b"))
    assert not tokens_match(token, sign(b"j" * 32, "session-a"))
    assert not tokens_match(token, None)


def test_agent_output_is_escaped_never_marked_safe() -> None:
    payload = {"text": "<script>alert(1)</script><img src=x onerror=alert(1)>"}
    html = ENVIRONMENT.from_string("<pre>{{ value|pretty_json }}</pre>").render(value=payload)
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert pretty_json("plain <b>") == "plain <b>"  # a str, so autoescaping applies
    assert status_class("completed") == "status-completed"
    assert status_class('x" onclick="alert(1)') == "status-unknown"


def test_the_script_knows_every_event_type() -> None:
    script = (STATIC / "app.js").read_text()
    listed = set(
        re.findall(r'"((?:job|execution|clarification|document|usage|queue)\.[a-z_]+)"', script)
    )
    assert listed >= {str(t) for t in EventType}  # and "execution.queued", written as text


def test_vendored_files_ship_with_the_package() -> None:
    assert STATIC_PATH == "/static"
    for name in ("htmx.min.js", "htmx.LICENSE", "app.js", "app.css"):
        assert (STATIC / name).is_file(), name
    assert "Zero-Clause BSD" in (STATIC / "htmx.LICENSE").read_text()
    # no CDN: the pages load scripts and styles from this server only
    base = (STATIC.parent / "templates" / "base.html").read_text()
    assert re.findall(r'(?:src|href)="(https?:)?//', base) == []
