"""Pure domain model: priorities, retry backoff, state transitions, ids, the error tree."""

from __future__ import annotations

import inspect
import itertools
import math
import random
import re
import time
import uuid
from typing import Any

import pytest

from conveyor import errors
from conveyor.domain.ids import is_valid_id, new_id
from conveyor.domain.priority import Priority
from conveyor.domain.retry import Backoff
from conveyor.domain.states import (
    EXECUTION_TRANSITIONS,
    JOB_TRANSITIONS,
    TERMINAL_EXECUTION_STATES,
    TERMINAL_JOB_STATES,
    ExecutionStatus,
    JobStatus,
    check_execution_transition,
    check_job_transition,
    execution_sources,
    job_sources,
)
from conveyor.errors import ConflictError, ConveyorError, InvalidInputError, InvalidTransitionError

# -- Priority ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("critical", Priority.CRITICAL),
        ("CRITICAL", Priority.CRITICAL),
        ("High", Priority.HIGH),
        ("mEdIuM", Priority.MEDIUM),
        ("low", Priority.LOW),
        ("  low  ", Priority.LOW),
    ],
)
def test_priority_parses_names_in_any_case(value: str, expected: Priority) -> None:
    assert Priority.parse(value) is expected


@pytest.mark.parametrize("number", [0, 1, 2, 3])
def test_priority_parses_numbers_0_to_3(number: int) -> None:
    parsed = Priority.parse(number)
    assert isinstance(parsed, Priority)
    assert int(parsed) == number


def test_priority_numbers_follow_claim_order() -> None:
    # lower numbers are claimed first: critical before high before medium before low
    assert [Priority.parse(n) for n in ("critical", "high", "medium", "low")] == [
        Priority.parse(0),
        Priority.parse(1),
        Priority.parse(2),
        Priority.parse(3),
    ]
    assert Priority.CRITICAL < Priority.HIGH < Priority.MEDIUM < Priority.LOW


def test_priority_none_means_medium() -> None:
    assert Priority.parse(None) is Priority.MEDIUM


@pytest.mark.parametrize("priority", list(Priority))
def test_priority_passes_through_and_round_trips_its_label(priority: Priority) -> None:
    assert Priority.parse(priority) is priority
    assert Priority.parse(priority.label) is priority
    assert priority.label == priority.label.lower()


@pytest.mark.parametrize(
    "value",
    ["urgent", "", "   ", "medium-ish", "lowest", -1, 4, 100, 1.0, 2.5, [1], {"p": 1}],
)
def test_priority_rejects_bad_values(value: Any) -> None:
    with pytest.raises(InvalidInputError):
        Priority.parse(value)


@pytest.mark.parametrize("value", [True, False])
def test_priority_rejects_bools(value: bool) -> None:
    # bool is an int subclass: True must not silently become HIGH (1)
    with pytest.raises(InvalidInputError):
        Priority.parse(value)


# -- Backoff ----------------------------------------------------------------------------------


def test_exponential_backoff_doubles_then_caps() -> None:
    backoff = Backoff("exponential", delay_s=2.0, max_delay_s=100.0, jitter=False)
    delays = [backoff.delay_for(n) for n in range(1, 10)]
    # delay_s * 2**(n-1) until it would pass max_delay_s
    assert delays[:6] == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
    assert delays[6:] == [100.0, 100.0, 100.0]
    assert all(later >= earlier for earlier, later in itertools.pairwise(delays))


def test_exponential_backoff_never_exceeds_cap_even_for_huge_attempt_numbers() -> None:
    backoff = Backoff("exponential", delay_s=1.0, max_delay_s=300.0, jitter=False)
    for attempt in (20, 64, 1_000, 10**6):
        delay = backoff.delay_for(attempt)
        assert delay == 300.0
        assert math.isfinite(delay)


def test_jittered_delays_stay_in_upper_half() -> None:
    backoff = Backoff.exponential(delay_s=1.0, max_delay_s=60.0)
    plain = Backoff("exponential", delay_s=1.0, max_delay_s=60.0, jitter=False)
    assert backoff.jitter
    rng = random.Random(1234)
    for attempt in range(1, 10):
        full = plain.delay_for(attempt)
        draws = [backoff.delay_for(attempt, rng) for _ in range(500)]
        assert all(full / 2 <= d <= full for d in draws), attempt
        # it really jitters, across most of the [d/2, d] range
        assert min(draws) < full * 0.6
        assert max(draws) > full * 0.9


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    backoff = Backoff.exponential(delay_s=3.0, max_delay_s=300.0)
    first = [backoff.delay_for(n, random.Random(7)) for n in range(1, 8)]
    second = [backoff.delay_for(n, random.Random(7)) for n in range(1, 8)]
    other = [backoff.delay_for(n, random.Random(8)) for n in range(1, 8)]
    assert first == second
    assert first != other


def test_fixed_backoff_is_constant() -> None:
    backoff = Backoff.fixed(5.0)
    assert backoff.kind == "fixed"
    assert not backoff.jitter
    assert [backoff.delay_for(n) for n in (1, 2, 3, 10, 50)] == [5.0] * 5


def test_fixed_backoff_with_jitter_stays_in_range() -> None:
    backoff = Backoff.fixed(8.0, jitter=True)
    rng = random.Random(99)
    draws = [backoff.delay_for(n % 5 + 1, rng) for n in range(300)]
    assert all(4.0 <= d <= 8.0 for d in draws)
    assert len(set(draws)) > 1


def test_zero_delay_stays_zero_with_jitter() -> None:
    backoff = Backoff("exponential", delay_s=0.0, max_delay_s=10.0, jitter=True)
    assert backoff.delay_for(5, random.Random(1)) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "linear"}, "type"),
        ({"delay_s": -1.0}, "delay_s"),
        ({"delay_s": 86_401.0, "max_delay_s": 86_401.0}, "delay_s"),
        ({"delay_s": math.nan}, "delay_s"),
        ({"delay_s": math.inf, "max_delay_s": math.inf}, "delay_s"),
        ({"delay_s": 10.0, "max_delay_s": 5.0}, "max_delay_s"),
        ({"delay_s": 1.0, "max_delay_s": 7 * 86_400 + 1.0}, "max_delay_s"),
    ],
)
def test_backoff_validation(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        Backoff(**kwargs)
    # the message names the offending field (\b: "delay_s" must not match "max_delay_s")
    assert re.search(rf"\b{field}\b", info.value.message), info.value.message


def test_backoff_boundaries_are_accepted() -> None:
    Backoff("exponential", delay_s=0.0, max_delay_s=0.0)
    Backoff("fixed", delay_s=86_400.0, max_delay_s=7 * 86_400.0)


@pytest.mark.parametrize(
    "backoff",
    [
        pytest.param(Backoff(), id="default"),
        pytest.param(Backoff.exponential(0.5, 30.0), id="exponential"),
        pytest.param(Backoff("exponential", 2.0, 2.0, jitter=False), id="exponential-flat"),
        pytest.param(Backoff("exponential", 10.0, 7 * 86_400.0), id="exponential-max-cap"),
        pytest.param(Backoff.fixed(5.0), id="fixed"),
        pytest.param(Backoff.fixed(5.0, jitter=True), id="fixed-jitter"),
        pytest.param(Backoff.fixed(0.0), id="fixed-zero"),
        # every delay is 0 here, but what was asked for must survive storage unchanged
        pytest.param(Backoff("exponential", 0.0, 0.0, jitter=False), id="exponential-zero-cap"),
    ],
)
def test_backoff_json_round_trip(backoff: Backoff) -> None:
    data = backoff.to_json()
    assert set(data) == {"type", "delay_s", "max_delay_s", "jitter"}
    assert data["type"] == backoff.kind
    assert Backoff.from_json(data) == backoff


def test_backoff_from_empty_json_is_the_default() -> None:
    assert Backoff.from_json(None) == Backoff()
    assert Backoff.from_json({}) == Backoff()


def test_backoff_from_partial_json_matches_the_constructors() -> None:
    assert Backoff.from_json({"type": "fixed", "delay_s": 5}) == Backoff.fixed(5.0)
    assert Backoff.from_json({"delay_s": 2}) == Backoff.exponential(2.0)
    # a base delay above the default cap raises the cap rather than failing
    big = Backoff.from_json({"delay_s": 600})
    assert big.delay_s == 600.0
    assert big.max_delay_s >= 600.0


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"type": "linear", "delay_s": 1}, id="unknown-type"),
        pytest.param({"delay_s": -5}, id="negative-delay"),
        pytest.param({"delay_s": 10, "max_delay_s": 1}, id="cap-below-delay"),
        # malformed client JSON must be a 422, not a ValueError deep in the engine
        pytest.param({"delay_s": "soon"}, id="delay-not-a-number"),
        pytest.param({"delay_s": 1, "max_delay_s": "later"}, id="cap-not-a-number"),
    ],
)
def test_backoff_from_bad_json_is_invalid_input(data: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        Backoff.from_json(data)


# -- transitions ------------------------------------------------------------------------------


def test_transition_tables_cover_every_state() -> None:
    assert set(JOB_TRANSITIONS) == set(JobStatus)
    assert set(EXECUTION_TRANSITIONS) == set(ExecutionStatus)
    for job_targets in JOB_TRANSITIONS.values():
        assert job_targets <= set(JobStatus)
    for execution_targets in EXECUTION_TRANSITIONS.values():
        assert execution_targets <= set(ExecutionStatus)


@pytest.mark.parametrize("current", list(JobStatus))
@pytest.mark.parametrize("target", list(JobStatus))
def test_check_job_transition_follows_the_table(current: JobStatus, target: JobStatus) -> None:
    if target in JOB_TRANSITIONS[current]:
        check_job_transition(current, target)
    else:
        with pytest.raises(InvalidTransitionError):
            check_job_transition(current, target)


@pytest.mark.parametrize("current", list(ExecutionStatus))
@pytest.mark.parametrize("target", list(ExecutionStatus))
def test_check_execution_transition_follows_the_table(
    current: ExecutionStatus, target: ExecutionStatus
) -> None:
    if target in EXECUTION_TRANSITIONS[current]:
        check_execution_transition(current, target)
    else:
        with pytest.raises(InvalidTransitionError):
            check_execution_transition(current, target)


J = JobStatus


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (J.PENDING, J.QUEUED),  # dependencies done
        (J.QUEUED, J.ACTIVE),  # claimed
        (J.ACTIVE, J.COMPLETED),
        (J.ACTIVE, J.FAILED),
        (J.ACTIVE, J.QUEUED),  # retry after backoff / released / lease expired
        (J.ACTIVE, J.AWAITING_INPUT),
        (J.ACTIVE, J.CANCELLED),
        (J.AWAITING_INPUT, J.QUEUED),  # answered
        (J.QUEUED, J.CANCELLED),
        (J.PENDING, J.CANCELLED),
        (J.FAILED, J.QUEUED),  # manual retry of a job
        (J.FAILED, J.PENDING),  # retry of a step waiting on dependencies
        (J.CANCELLED, J.QUEUED),
    ],
)
def test_job_lifecycle_transitions_are_allowed(current: JobStatus, target: JobStatus) -> None:
    check_job_transition(current, target)
    assert current in job_sources(target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (J.QUEUED, J.COMPLETED),  # must run first
        (J.QUEUED, J.FAILED),
        (J.PENDING, J.ACTIVE),  # must be queued first
        (J.PENDING, J.COMPLETED),
        (J.AWAITING_INPUT, J.ACTIVE),  # holds no lease; must be queued and claimed again
        (J.AWAITING_INPUT, J.COMPLETED),
        (J.COMPLETED, J.QUEUED),  # completed is final
        (J.COMPLETED, J.FAILED),
        (J.FAILED, J.COMPLETED),
        (J.FAILED, J.ACTIVE),
        (J.CANCELLED, J.COMPLETED),
        (J.CANCELLED, J.ACTIVE),
        (J.ACTIVE, J.ACTIVE),
        (J.QUEUED, J.QUEUED),
    ],
)
def test_job_shortcuts_are_forbidden(current: JobStatus, target: JobStatus) -> None:
    with pytest.raises(InvalidTransitionError) as info:
        check_job_transition(current, target, what="step")
    assert isinstance(info.value, ConflictError)
    assert current.value in info.value.message
    assert target.value in info.value.message
    assert info.value.message.startswith("step ")
    assert current not in job_sources(target)


def test_terminal_job_states_only_leave_through_retry() -> None:
    assert {s for s in JobStatus if s.is_terminal} == set(TERMINAL_JOB_STATES)
    assert {J.COMPLETED, J.FAILED, J.CANCELLED} == TERMINAL_JOB_STATES
    assert JOB_TRANSITIONS[J.COMPLETED] == frozenset()
    retry_targets = {J.QUEUED, J.PENDING}
    for state in (J.FAILED, J.CANCELLED):
        assert JOB_TRANSITIONS[state] == retry_targets
    for state in TERMINAL_JOB_STATES:
        assert not JOB_TRANSITIONS[state] & TERMINAL_JOB_STATES


def test_terminal_execution_states_only_leave_through_retry() -> None:
    e = ExecutionStatus
    assert {s for s in ExecutionStatus if s.is_terminal} == set(TERMINAL_EXECUTION_STATES)
    assert {e.COMPLETED, e.FAILED, e.CANCELLED} == TERMINAL_EXECUTION_STATES
    assert EXECUTION_TRANSITIONS[e.COMPLETED] == frozenset()
    for state in (e.FAILED, e.CANCELLED):
        assert EXECUTION_TRANSITIONS[state] == {e.RUNNING, e.QUEUED}
    for state in TERMINAL_EXECUTION_STATES:
        assert not EXECUTION_TRANSITIONS[state] & TERMINAL_EXECUTION_STATES


def test_every_terminal_state_is_reachable() -> None:
    for job_state in TERMINAL_JOB_STATES:
        assert job_sources(job_state), job_state
    for execution_state in TERMINAL_EXECUTION_STATES:
        assert execution_sources(execution_state), execution_state
    assert J.ACTIVE in job_sources(J.COMPLETED)
    assert ExecutionStatus.RUNNING in execution_sources(ExecutionStatus.COMPLETED)


@pytest.mark.parametrize("target", list(JobStatus))
def test_job_sources_is_the_inverse_table(target: JobStatus) -> None:
    expected = {src for src in JobStatus if target in JOB_TRANSITIONS[src]}
    assert job_sources(target) == expected
    # the inverse is also what check_job_transition accepts
    for src in JobStatus:
        allowed = True
        try:
            check_job_transition(src, target)
        except InvalidTransitionError:
            allowed = False
        assert allowed == (src in job_sources(target))


@pytest.mark.parametrize("target", list(ExecutionStatus))
def test_execution_sources_is_the_inverse_table(target: ExecutionStatus) -> None:
    expected = {src for src in ExecutionStatus if target in EXECUTION_TRANSITIONS[src]}
    assert execution_sources(target) == expected
    for src in ExecutionStatus:
        allowed = True
        try:
            check_execution_transition(src, target)
        except InvalidTransitionError:
            allowed = False
        assert allowed == (src in execution_sources(target))


# -- ids --------------------------------------------------------------------------------------


def _millis(value: str) -> int:
    """The Unix milliseconds in the first 48 bits of a UUIDv7."""
    return uuid.UUID(value).int >> 80


def test_new_id_is_a_uuid7() -> None:
    for _ in range(200):
        value = new_id()
        parsed = uuid.UUID(value)
        assert str(parsed) == value  # canonical, lowercase, hyphenated
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert (parsed.int >> 76) & 0xF == 0x7
        assert (parsed.int >> 62) & 0b11 == 0b10


def test_new_id_embeds_the_current_unix_millis() -> None:
    before = time.time_ns() // 1_000_000
    value = new_id()
    after = time.time_ns() // 1_000_000
    assert before <= _millis(value) <= after


def _next_millisecond(after: int) -> None:
    while time.time_ns() // 1_000_000 <= after:
        time.sleep(0.0005)


def test_new_id_is_time_ordered_across_milliseconds() -> None:
    ids = []
    for _ in range(5):
        value = new_id()
        ids.append(value)
        _next_millisecond(_millis(value))
    assert ids == sorted(ids)
    stamps = [_millis(v) for v in ids]
    assert all(a < b for a, b in itertools.pairwise(stamps))
    # as strings and as UUIDs, the order is the same
    assert [uuid.UUID(v) for v in ids] == sorted(uuid.UUID(v) for v in ids)


def test_new_id_is_unique_and_never_goes_back_in_time() -> None:
    ids = [new_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    stamps = [_millis(v) for v in ids]
    assert all(a <= b for a, b in itertools.pairwise(stamps))
    assert all(is_valid_id(v) for v in ids)


def test_new_id_random_bits_vary() -> None:
    # 74 random bits: ids drawn in the same millisecond must still differ in their tail
    tails = {new_id()[-12:] for _ in range(100)}
    assert len(tails) > 90


SAMPLE_ID = "0190f0e4-7b1c-7d3e-8a2a-1234567890ab"


def test_is_valid_id_accepts_lowercase_uuids() -> None:
    for value in (SAMPLE_ID, str(uuid.uuid4()), str(uuid.uuid1()), new_id()):
        assert is_valid_id(value), value


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("not-an-id", id="text"),
        pytest.param(SAMPLE_ID.upper(), id="uppercase"),
        pytest.param(SAMPLE_ID.replace("-", ""), id="no-hyphens"),
        pytest.param("{" + SAMPLE_ID + "}", id="braces"),
        pytest.param("urn:uuid:" + SAMPLE_ID, id="urn"),
        pytest.param(SAMPLE_ID[:-1], id="too-short"),
        pytest.param(SAMPLE_ID + "0", id="too-long"),
        pytest.param(" " + SAMPLE_ID, id="leading-space"),
        pytest.param(SAMPLE_ID + " ", id="trailing-space"),
        pytest.param(SAMPLE_ID + "\n", id="trailing-newline"),
        pytest.param(SAMPLE_ID.replace("8a2a", "8g2a"), id="not-hex"),
    ],
)
def test_is_valid_id_rejects_everything_else(value: str) -> None:
    assert not is_valid_id(value)


# -- errors -----------------------------------------------------------------------------------


def _error_classes() -> list[type[BaseException]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__ == errors.__name__
    ]


def test_every_error_derives_from_conveyor_error() -> None:
    classes = _error_classes()
    assert len(classes) >= 20
    for cls in classes:
        assert issubclass(cls, ConveyorError), cls.__name__


def test_error_codes_are_unique_and_titled() -> None:
    classes = [c for c in _error_classes() if issubclass(c, ConveyorError)]
    codes = [c.code for c in classes]
    duplicates = {code for code in codes if codes.count(code) > 1}
    assert not duplicates
    for cls in classes:
        assert cls.code and cls.code == cls.code.strip().lower(), cls.__name__
        assert cls.title, cls.__name__
        # each class states its own code: an inherited one would make two branches alike
        assert "code" in vars(cls), cls.__name__


@pytest.mark.parametrize(
    ("child", "parent"),
    [
        ("InvalidInputError", "ConveyorError"),
        ("UnknownTaskError", "InvalidInputError"),
        ("WorkflowDefinitionError", "InvalidInputError"),
        ("AnswerValidationError", "InvalidInputError"),
        ("IdempotencyMismatchError", "InvalidInputError"),
        ("NotFoundError", "ConveyorError"),
        ("ConflictError", "ConveyorError"),
        ("InvalidTransitionError", "ConflictError"),
        ("DependenciesNotMetError", "ConflictError"),
        ("GoneError", "ConveyorError"),
        ("AuthenticationError", "ConveyorError"),
        ("PermissionDeniedError", "ConveyorError"),
        ("QuotaExceededError", "ConveyorError"),
        ("LeaseLostError", "ConveyorError"),
        ("ServiceUnavailableError", "ConveyorError"),
        ("StoreUnavailableError", "ServiceUnavailableError"),
        ("ConfigurationError", "ConveyorError"),
        ("TaskFailure", "ConveyorError"),
        ("NonRetryableError", "TaskFailure"),
        ("JobCancelled", "ConveyorError"),
    ],
)
def test_error_tree_matches_its_documentation(child: str, parent: str) -> None:
    child_cls = getattr(errors, child)
    parent_cls = getattr(errors, parent)
    assert child_cls.__bases__ == (parent_cls,)


def test_errors_carry_message_and_details() -> None:
    plain = errors.NotFoundError("job x not found")
    assert plain.message == "job x not found"
    assert str(plain) == "job x not found"
    assert plain.details == []
    detailed = InvalidInputError("bad", details=[{"loc": ["a"], "msg": "required"}])
    assert detailed.details == [{"loc": ["a"], "msg": "required"}]
    quota = errors.QuotaExceededError("slow down", retry_after_s=2.5)
    assert quota.retry_after_s == 2.5
    assert quota.message == "slow down"
