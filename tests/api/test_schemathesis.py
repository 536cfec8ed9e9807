"""S15: contract fuzzing of the whole OpenAPI document with schemathesis (RELIABILITY.md §4).

One schemathesis run, as ``st run`` would do it (probing, examples, coverage, fuzzing and
the stateful phase with links inferred from ``Location`` headers), in-process against the
ASGI app on a temporary SQLite database (PostgreSQL is covered by the other API tests).
Every check is on (``tests/api/schemathesis.toml``); ``negative_data_rejection`` accepts
only 400/401/403/404/409/413/422/429, so a 5xx on bad input fails. The seed and the
example budget are fixed so a failure reproduces.

The caller is a normal (non-admin) account. It has the ``worker`` role besides ``user`` so
the fuzzer also reaches the worker routes, the only ones with a DELETE (which
``use_after_free`` and ``ensure_resource_availability`` need); admin routes answer it 403.

No check is switched off. Three narrow adaptations, each explained where it is made:
``UNEXPRESSIBLE`` (rejections of rules JSON Schema cannot state), ``scope_idempotency_keys``
(key reuse across different bodies is state, not schema) and the name dictionaries in
``schemathesis.toml`` (so generated requests reach real workflows, tasks and steps).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import schemathesis
from fastapi import FastAPI
from schemathesis.engine import Status, events, from_schema
from schemathesis.hooks import GLOBAL_HOOK_DISPATCHER
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.python import asgi

from conveyor.api.app import create_app
from conveyor.api.state import ApiState
from conveyor.settings import Settings
from tests.apps.api_app import app as api_test_app

CONFIG = Path(__file__).with_name("schemathesis.toml")
ADMIN_PASSWORD = "admin-password-for-tests"
# the credentials schemathesis.toml logs in with ([auth.dynamic.openapi.HTTPBearer])
FUZZER_USERNAME = "fuzzer"
FUZZER_PASSWORD = "fuzzer-password-for-tests-0"
# the whole run (all phases) must stay within this budget on a 2-core machine
BUDGET_S = 180.0

pytestmark = [
    pytest.mark.timeout(int(BUDGET_S) + 120),
    # schemathesis' own strategies trip a Hypothesis deprecation warning; not ours to fix
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]


_IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_.:-]{8,200}$")


def scope_idempotency_keys(
    context: schemathesis.HookContext, case: schemathesis.Case[Any], kwargs: dict[str, Any]
) -> None:
    """``before_call`` hook: a valid ``Idempotency-Key`` is made specific to the request it
    comes with. The fuzzer draws keys from a tiny space ("00000000"...) and sends one key
    with many different bodies; the API rightly answers 422 (same key, different body: the
    IETF idempotency draft and RELIABILITY R8), which no schema can express because it
    depends on earlier requests. A repeat of the same request keeps its key, so replays
    (200 with the original resource) are still fuzzed; invalid keys are left alone, so
    negative cases stay negative. Key reuse itself is covered by the R7/R8 tests."""
    key = case.headers.get("Idempotency-Key") if case.headers else None
    if not isinstance(key, str) or not _IDEMPOTENCY_KEY.fullmatch(key):
        return
    request = json.dumps(
        [case.method, case.formatted_path, case.body], sort_keys=True, default=repr
    )
    digest = hashlib.sha256(request.encode()).hexdigest()[:16]
    case.headers["Idempotency-Key"] = f"{key[:183]}-{digest}"


# Rules the API enforces on schema-valid data that JSON Schema cannot express, so
# positive_data_acceptance cannot apply to them: a 422 for one of these is the right answer
# and is dropped (and counted in the summary). Any other rejection of valid data still fails.
UNEXPRESSIBLE: dict[str, re.Pattern[str]] = {
    # an ad-hoc DAG: ids unique across array items, references to other items, no cycles
    "POST /api/v1/executions": re.compile(
        r"duplicate step id|depends on itself|depends on unknown step|dependency cycle"
        # the input each step's task takes: a schema per task, chosen by another field
        r"|invalid input for step"
    ),
    # a comparison between two fields of BackoffIn
    "POST /api/v1/jobs": re.compile(r"max_delay_s must be >= delay_s"),
    # a comparison between two query parameters
    "GET /api/v1/telemetry/summary": re.compile(r"from must not be after to"),
}


#: rules of every operation: no text the API stores or filters by may hold a NUL
#: character (PostgreSQL refuses it), which a string schema does not say
EVERYWHERE = re.compile(r"the path or query holds a NUL character")


def keep_failure(
    context: schemathesis.HookContext,
    failure: Exception,
    case: schemathesis.Case[Any],
    response: schemathesis.Response,
) -> bool:
    """``filter_failure`` hook: drop only the rejections listed in ``UNEXPRESSIBLE`` and
    ``EVERYWHERE``."""
    own = UNEXPRESSIBLE.get(case.operation.label)
    patterns = [EVERYWHERE] if own is None else [EVERYWHERE, own]
    if not isinstance(failure, RejectedPositiveData):
        return True
    if response.status_code != 422:
        return True
    try:
        problem = json.loads(response.content)
    except ValueError:
        return True
    if not isinstance(problem, dict):
        return True
    messages = [str(problem.get("detail", ""))]
    messages += [str(e.get("msg", "")) for e in problem.get("errors") or [] if isinstance(e, dict)]
    return not any(p.search(message) for p in patterns for message in messages)


@dataclass
class Finding:
    """One distinct problem: an operation, a check and what it reported."""

    operation: str
    check: str
    title: str
    message: str
    curl: str
    response: str
    # what the API said, without the values: tells apart problems with the same title
    cause: str = ""
    count: int = 1

    def render(self) -> str:
        message = "\n".join(f"    {line}" for line in self.message.strip().splitlines())
        return (
            f"- [{self.check}] {self.operation}: {self.title} (x{self.count})\n{message}\n"
            f"    request:  {self.curl}\n    response: {self.response}"
        )


@dataclass
class RunReport:
    findings: dict[tuple[str, str, str, str], Finding] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    # status codes seen per operation label, over every phase
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    phases: dict[str, Status] = field(default_factory=dict)
    inferred_links: int = 0
    scenarios: int = 0
    dropped: int = 0
    stop_reason: str = ""
    elapsed_s: float = 0.0

    def record(self, finding: Finding) -> None:
        key = (finding.operation, finding.check, finding.title, finding.cause)
        if key in self.findings:
            self.findings[key].count += 1
        else:
            self.findings[key] = finding

    def summary(self) -> str:
        lines = [f"schemathesis: {len(self.findings)} distinct problem(s), {self.scenarios} "]
        lines[0] += f"scenarios in {self.elapsed_s:.0f} s, stop reason {self.stop_reason}, "
        lines[0] += f"{self.dropped} rejection(s) of unexpressible rules dropped"
        lines += [finding.render() for finding in self.findings.values()]
        lines += [f"- [error] {error}" for error in self.errors]
        lines += ["statuses per operation:"]
        for label, counts in sorted(self.statuses.items()):
            seen = ", ".join(f"{status}: {n}" for status, n in sorted(counts.items()))
            lines.append(f"    {label}  {seen}")
        return "\n".join(lines)


def _response_text(recorder_response: object) -> str:
    status = getattr(recorder_response, "status_code", "?")
    headers = getattr(recorder_response, "headers", {}) or {}
    content_type = headers.get("content-type") or headers.get("Content-Type")
    body = (getattr(recorder_response, "content", b"") or b"")[:300]
    return f"{status} {content_type} {body!r}"


def _cause(response: schemathesis.Response | None) -> str:
    """The status and the problem's detail and error messages, quoted values blanked."""
    if response is None:
        return ""
    try:
        problem = json.loads(response.content)
    except ValueError:
        return str(response.status_code)
    if not isinstance(problem, dict):
        return str(response.status_code)
    said = [str(problem.get("detail", ""))]
    said += [str(e.get("msg", "")) for e in problem.get("errors") or [] if isinstance(e, dict)]
    return f"{response.status_code} " + re.sub(r"'[^']*'", "'…'", " | ".join(said))


def _collect(event: events.ScenarioFinished, report: RunReport) -> None:
    recorder = event.recorder
    report.scenarios += 1
    report.dropped += sum(recorder.filtered_failures.values())
    for case_id, interaction in recorder.interactions.items():
        if interaction.response is None:
            continue
        node = recorder.cases.get(case_id)
        label = node.value.operation.label if node is not None else recorder.label
        report.statuses.setdefault(label, Counter())[interaction.response.status_code] += 1
    for case_id, checks in recorder.checks.items():
        for check in checks:
            if check.status != Status.FAILURE or check.failure_info is None:
                continue
            failure = check.failure_info.failure
            sent = recorder.interactions.get(case_id)
            response = sent.response if sent is not None else None
            report.record(
                Finding(
                    operation=failure.operation or recorder.label,
                    check=check.name,
                    title=failure.title,
                    message=failure.message[:1500],
                    curl=check.failure_info.code_sample[:1500],
                    response="-" if response is None else _response_text(response),
                    cause=_cause(response),
                )
            )


@dataclass
class Served:
    api: FastAPI
    state: ApiState


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The app on a fresh SQLite file, with its lifespan running (the schemathesis ASGI
    client starts it on first use and keeps it until ``shutdown_lifespans``)."""
    tmp = tmp_path_factory.mktemp("schemathesis")
    settings = Settings(
        database_url=f"sqlite:///{tmp / 'fuzz.db'}",
        jwt_secret="s" * 48,
        admin_username="admin",
        admin_password=ADMIN_PASSWORD,
        # the fuzzer sends many wrong passwords; the login limit must not lock it out
        login_max_failures=1000,
        sweep_interval_s=0.2,
        poll_max_s=0.2,
        cancel_grace_s=0.5,
        drain_timeout_s=1.0,
    )
    api = create_app(api_test_app, settings, worker_concurrency=2)
    with asgi.get_client(cast(Any, api)) as client:
        admin = client.post(
            "/api/v1/auth/token", json={"username": "admin", "password": ADMIN_PASSWORD}
        )
        assert admin.status_code == 200, admin.text
        created = client.post(
            "/api/v1/users",
            json={
                "username": FUZZER_USERNAME,
                "password": FUZZER_PASSWORD,
                "roles": ["user", "worker"],
            },
            headers={"Authorization": f"Bearer {admin.json()['access_token']}"},
        )
        assert created.status_code == 201, created.text
    state = api.state.conveyor
    assert isinstance(state, ApiState), "the lifespan did not run"
    try:
        yield Served(api, state)
    finally:
        asgi.shutdown_lifespans()


@pytest.fixture(scope="module")
def report(served: Served) -> RunReport:
    config = schemathesis.Config.from_path(CONFIG)
    served_schema = schemathesis.openapi.from_asgi("/openapi.json", served.api, config=config)
    # signing out revokes the fuzzer's own token: every later call would be a bare 401
    # (tests/api/test_auth.py covers the route)
    schema = served_schema.exclude(path="/api/v1/auth/logout")
    schema.hooks.register_hook_with_name(keep_failure, "filter_failure")
    result = RunReport()
    started = time.monotonic()
    schemathesis.hook("before_call")(scope_idempotency_keys)
    try:
        _execute(schema, result)
    finally:
        GLOBAL_HOOK_DISPATCHER.unregister(scope_idempotency_keys)
    result.elapsed_s = time.monotonic() - started
    print(result.summary())  # kept in the test log even when everything passes
    return result


def _execute(schema: Any, result: RunReport) -> None:
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            _collect(event, result)
        elif isinstance(event, events.PhaseStarted) and event.payload is not None:
            result.inferred_links = event.payload.inferred_transitions
        elif isinstance(event, events.PhaseFinished):
            result.phases[event.phase.name.value] = event.status
        elif isinstance(event, events.NonFatalError):
            result.errors.append(f"{event.label}: {event.info.title}: {event.info.message[:800]}")
        elif isinstance(event, events.FatalError):
            result.errors.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            result.stop_reason = event.stop_reason.value
            result.errors += [f"after-run check: {failure}" for failure in event.failures]


def test_schemathesis_finds_no_problem(report: RunReport) -> None:
    """No 5xx, every response as documented, bad input rejected, good input accepted,
    auth enforced, deleted resources gone."""
    assert not report.findings and not report.errors, report.summary()
    assert report.stop_reason == "completed"


def test_every_phase_ran(report: RunReport) -> None:
    for phase in ("examples", "coverage", "fuzzing", "stateful"):
        assert report.phases.get(phase) not in (None, Status.SKIP), (phase, report.phases)
    # POST /jobs, /executions and /workers answer with Location: the stateful phase chains them
    assert report.inferred_links > 0
    assert report.elapsed_s < BUDGET_S, f"the run took {report.elapsed_s:.0f} s"


def test_the_fuzzer_reached_the_business_logic(report: RunReport) -> None:
    """A run where everything answered 401 or 404 would pass every check and prove nothing."""
    must_succeed = {
        "GET /api/v1/me": 200,
        "POST /api/v1/jobs": 202,
        "GET /api/v1/jobs": 200,
        "GET /api/v1/jobs/{job_id}": 200,
        "POST /api/v1/executions": 202,
        "GET /api/v1/executions": 200,
        "GET /api/v1/executions/{execution_id}": 200,
        "GET /api/v1/executions/{execution_id}/steps": 200,
        "GET /api/v1/workflows/{name}": 200,
        "POST /api/v1/workers": 201,
        "DELETE /api/v1/workers/{worker_id}": 204,
    }
    missed = {
        label: dict(report.statuses.get(label, {}))
        for label, status in must_succeed.items()
        if report.statuses.get(label, Counter())[status] == 0
    }
    assert not missed, f"never answered with success (statuses seen): {missed}"
    answers = sum(sum(c.values()) for c in report.statuses.values())
    unauthorised = sum(c[401] for c in report.statuses.values())
    assert answers > 500 and unauthorised < answers / 2, (answers, unauthorised)
