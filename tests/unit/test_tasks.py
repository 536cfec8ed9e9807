"""Task definitions: signatures become validated inputs, returns become JSON.

This module uses ``from __future__ import annotations`` on purpose: every annotation of
the task functions below is a string that TaskDefinition must resolve.
"""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from conveyor import Context
from conveyor.app import Conveyor
from conveyor.domain.priority import Priority
from conveyor.domain.retry import Backoff
from conveyor.engine.jobs import MAX_TIMEOUT_S
from conveyor.engine.models import TaskDefaults
from conveyor.errors import (
    InvalidInputError,
    UnknownTaskError,
    WorkflowDefinitionError,
)
from conveyor.worker.tasks import TaskDefinition

SECRET = "sk-live-7f3a9c-do-not-log"


class Address(BaseModel):
    street: str
    zip_code: int


class Customer(BaseModel):
    name: str
    address: Address
    tier: Literal["free", "pro"] = "free"


@dataclasses.dataclass
class Receipt:
    customer: Customer
    total: float
    paid_at: datetime
    tags: list[str]


def build(fn: Any, name: str | None = None) -> TaskDefinition:
    return TaskDefinition.build(name or fn.__name__, fn, TaskDefaults())


def details_of(exc: InvalidInputError) -> list[tuple[tuple[str, ...], str]]:
    return [(tuple(d["loc"]), d["msg"]) for d in exc.details]


# -- context parameter ------------------------------------------------------------------------


def test_first_parameter_named_ctx_is_the_context() -> None:
    def task(ctx: Any, url: str) -> None: ...

    definition = build(task)
    assert definition.context_param == "ctx"
    assert definition.params == ("url",)
    assert "ctx" not in definition.input_schema()["properties"]


def test_first_parameter_named_context_is_the_context() -> None:
    def task(context: object, url: str) -> None: ...

    definition = build(task)
    assert definition.context_param == "context"
    assert definition.params == ("url",)


def test_first_parameter_annotated_context_is_the_context() -> None:
    def task(c: Context, url: str) -> None: ...

    assert task.__annotations__["c"] == "Context"  # a string, resolved by build
    definition = build(task)
    assert definition.context_param == "c"
    assert definition.params == ("url",)


def test_unannotated_first_parameter_with_another_name_is_input() -> None:
    def task(job: Any, url: str) -> None: ...

    definition = build(task)
    assert definition.context_param is None
    assert definition.params == ("job", "url")


def test_ctx_is_only_the_context_in_first_position() -> None:
    def task(url: str, ctx: int = 0) -> None: ...

    definition = build(task)
    assert definition.context_param is None
    assert definition.params == ("url", "ctx")
    assert definition.parse_input({"url": "u", "ctx": 3}) == {"url": "u", "ctx": 3}


def test_task_without_context() -> None:
    def task(a: int, b: int = 2) -> int:
        return a + b

    definition = build(task)
    assert definition.context_param is None
    assert definition.params == ("a", "b")
    assert not definition.is_async


def test_async_task_is_detected() -> None:
    async def task(ctx: Any, a: int) -> int:
        return a

    assert build(task).is_async


def test_docstring_becomes_the_description() -> None:
    def task(a: int) -> None:
        """Do the thing."""

    assert build(task).description == "Do the thing."


def test_var_positional_parameters_are_refused() -> None:
    def task(ctx: Any, *items: int) -> None: ...

    with pytest.raises(WorkflowDefinitionError):
        build(task)


def test_positional_only_parameters_are_refused() -> None:
    def task(a: int, /, b: int) -> None: ...

    with pytest.raises(WorkflowDefinitionError):
        build(task)


# -- input validation ------------------------------------------------------------------------


def charge(ctx: Any, customer: Customer, amount: int, note: str = "") -> None: ...


def test_valid_input_becomes_keyword_arguments() -> None:
    definition = build(charge)
    kwargs = definition.parse_input(
        {"customer": {"name": "Ada", "address": {"street": "Main", "zip_code": 1}}, "amount": 5}
    )
    assert set(kwargs) == {"customer", "amount", "note"}
    assert kwargs["amount"] == 5
    assert kwargs["note"] == ""


def test_model_parameters_receive_model_instances() -> None:
    definition = build(charge)
    kwargs = definition.parse_input(
        {
            "customer": {"name": "Ada", "address": {"street": "Main", "zip_code": 9}},
            "amount": 5,
        }
    )
    customer = kwargs["customer"]
    assert isinstance(customer, Customer)
    assert isinstance(customer.address, Address)
    assert customer.address.zip_code == 9
    assert customer.tier == "free"


def test_inputs_take_json_types_only() -> None:
    # a JSON string is not an int: inputs match the published JSON Schema exactly
    definition = build(charge)
    with pytest.raises(InvalidInputError) as info:
        definition.parse_input(
            {
                "customer": {"name": "Ada", "address": {"street": "Main", "zip_code": "9"}},
                "amount": 5,
            }
        )
    assert [loc for loc, _ in details_of(info.value)] == [("customer", "address", "zip_code")]


def test_missing_field_is_invalid_input_with_details() -> None:
    definition = build(charge)
    with pytest.raises(InvalidInputError) as info:
        definition.parse_input({"amount": 5})
    assert "charge" in info.value.message
    locs = [loc for loc, _ in details_of(info.value)]
    assert locs == [("customer",)]
    for detail in info.value.details:
        assert set(detail) == {"loc", "msg"}
        assert isinstance(detail["msg"], str) and detail["msg"]
        assert all(isinstance(part, str) for part in detail["loc"])


def test_every_problem_is_listed_with_its_location() -> None:
    definition = build(charge)
    with pytest.raises(InvalidInputError) as info:
        definition.parse_input(
            {"customer": {"name": "Ada", "address": {"street": "Main"}}, "amount": "five"}
        )
    locs = {loc for loc, _ in details_of(info.value)}
    assert locs == {("customer", "address", "zip_code"), ("amount",)}


def test_wrong_types_do_not_leak_input_values() -> None:
    definition = build(charge)
    with pytest.raises(InvalidInputError) as info:
        definition.parse_input(
            {
                "customer": {
                    "name": SECRET,
                    "address": {"street": "Main", "zip_code": SECRET},
                    "tier": SECRET,
                },
                "amount": SECRET,
                "note": {"nested": SECRET},
            }
        )
    exc = info.value
    locs = {loc for loc, _ in details_of(exc)}
    assert locs == {
        ("customer", "address", "zip_code"),
        ("customer", "tier"),
        ("amount",),
        ("note",),
    }
    everything = json.dumps(exc.details) + exc.message + str(exc) + repr(exc.args)
    assert SECRET not in everything
    assert SECRET[:12] not in everything
    # the pydantic error (which holds the input) is not chained as the cause either
    assert exc.__cause__ is None


def test_null_values_and_missing_input_are_invalid() -> None:
    def task(a: int) -> None: ...

    definition = build(task)
    with pytest.raises(InvalidInputError):
        definition.parse_input({"a": None})
    with pytest.raises(InvalidInputError):
        definition.parse_input(None)
    with pytest.raises(InvalidInputError):
        definition.parse_input({})


def test_extra_keys_are_rejected_for_plain_jobs() -> None:
    definition = build(charge)
    data = {
        "customer": {"name": "Ada", "address": {"street": "Main", "zip_code": 1}},
        "amount": 5,
        "amuont": SECRET,
    }
    with pytest.raises(InvalidInputError) as info:
        definition.parse_input(data)
    assert details_of(info.value)[0][0] == ("amuont",)
    assert SECRET not in json.dumps(info.value.details)
    with pytest.raises(InvalidInputError):
        definition.validate_input(data)


def test_extra_keys_are_ignored_with_ignore_unknown() -> None:
    definition = build(charge)
    kwargs = definition.parse_input(
        {
            "customer": {"name": "Ada", "address": {"street": "Main", "zip_code": 1}},
            "amount": 5,
            "unrelated": True,
        },
        ignore_unknown=True,
    )
    assert set(kwargs) == {"customer", "amount", "note"}


def test_ignore_unknown_still_validates_known_keys() -> None:
    definition = build(charge)
    with pytest.raises(InvalidInputError) as info:
        definition.parse_input({"amount": 5, "unrelated": 1}, ignore_unknown=True)
    assert [loc for loc, _ in details_of(info.value)] == [("customer",)]


def test_var_keyword_task_receives_extra_keys() -> None:
    def task(a: int, **rest: Any) -> None: ...

    definition = build(task)
    assert definition.var_keyword
    assert definition.parse_input({"a": 1, "b": 2, "c": "x"}) == {"a": 1, "b": 2, "c": "x"}


# -- dependencies ------------------------------------------------------------------------------


def summarize(ctx: Any, fetch: Customer, style: str = "short") -> str:
    return f"{fetch.name}:{style}"


def test_dependencies_are_injected_by_parameter_name() -> None:
    definition = build(summarize)
    output = {"name": "Ada", "address": {"street": "Main", "zip_code": 1}}
    kwargs = definition.parse_input(
        {"style": "long", "topic": "unused execution input"},
        dependencies={"fetch": output, "translate": {"text": "not a parameter"}},
        ignore_unknown=True,
    )
    assert set(kwargs) == {"fetch", "style"}
    assert isinstance(kwargs["fetch"], Customer)
    assert kwargs["fetch"].name == "Ada"
    assert kwargs["style"] == "long"


def test_dependencies_not_named_after_parameters_are_not_extra_keys() -> None:
    definition = build(summarize)
    output = {"name": "Ada", "address": {"street": "Main", "zip_code": 1}}
    kwargs = definition.parse_input({}, dependencies={"fetch": output, "other_step": 42})
    assert set(kwargs) == {"fetch", "style"}


def test_dependency_outputs_are_validated() -> None:
    definition = build(summarize)
    with pytest.raises(InvalidInputError) as info:
        definition.parse_input({}, dependencies={"fetch": {"name": "Ada"}}, ignore_unknown=True)
    assert ("fetch", "address") in {loc for loc, _ in details_of(info.value)}


# -- outputs -----------------------------------------------------------------------------------


def make_receipt(ctx: Any, amount: float) -> Receipt:
    raise NotImplementedError


def untyped_result(ctx: Any):  # type: ignore[no-untyped-def]
    raise NotImplementedError


PAID_AT = datetime(2025, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)
ADA = Customer(name="Ada", address=Address(street="Main", zip_code=1), tier="pro")
ADA_JSON = {"name": "Ada", "address": {"street": "Main", "zip_code": 1}, "tier": "pro"}


def assert_json_compatible(value: Any) -> None:
    assert json.loads(json.dumps(value)) == value


def test_dump_output_serialises_an_annotated_dataclass() -> None:
    definition = build(make_receipt)
    dumped = definition.dump_output(Receipt(ADA, 12.5, PAID_AT, ["a", "b"]))
    assert_json_compatible(dumped)
    assert dumped["customer"] == ADA_JSON
    assert dumped["total"] == 12.5
    assert dumped["tags"] == ["a", "b"]
    assert datetime.fromisoformat(dumped["paid_at"]) == PAID_AT


def test_dump_output_without_annotation_uses_runtime_types() -> None:
    definition = build(untyped_result)
    value = {
        "customer": ADA,
        "receipt": Receipt(ADA, 1.0, PAID_AT, []),
        "when": PAID_AT,
        "day": date(2025, 1, 2),
        "offset": datetime(2025, 1, 2, 3, 4, tzinfo=timezone(timedelta(hours=2))),
        "list": [ADA, 1, "x", None],
    }
    dumped = definition.dump_output(value)
    assert_json_compatible(dumped)
    assert dumped["customer"] == ADA_JSON
    assert dumped["receipt"]["customer"] == ADA_JSON
    assert datetime.fromisoformat(dumped["receipt"]["paid_at"]) == PAID_AT
    assert datetime.fromisoformat(dumped["when"]) == PAID_AT
    assert date.fromisoformat(dumped["day"]) == date(2025, 1, 2)
    assert datetime.fromisoformat(dumped["offset"]) == value["offset"]
    assert dumped["list"] == [ADA_JSON, 1, "x", None]


def test_dump_output_of_a_model_return() -> None:
    def task(ctx: Any) -> Customer:
        return ADA

    dumped = build(task).dump_output(ADA)
    assert dumped == ADA_JSON


def test_dump_output_of_plain_values() -> None:
    def task(ctx: Any) -> dict[str, Any]:
        return {}

    definition = build(task)
    assert definition.dump_output({"a": [1, 2.5, "x", True, None]}) == {
        "a": [1, 2.5, "x", True, None]
    }
    assert definition.dump_output({}) == {}


def test_output_schema_follows_the_return_annotation() -> None:
    def task(ctx: Any) -> Customer:
        return ADA

    schema = build(task).output_schema()
    assert set(schema["properties"]) == {"name", "address", "tier"}
    assert set(schema["required"]) == {"name", "address"}

    def count(ctx: Any) -> int:
        return 1

    assert build(count).output_schema()["type"] == "integer"
    assert build(make_receipt).output_schema()["properties"]["paid_at"]["format"] == "date-time"


def test_input_schema_lists_parameters_but_not_the_context() -> None:
    schema = build(charge).input_schema()
    assert set(schema["properties"]) == {"customer", "amount", "note"}
    assert set(schema["required"]) == {"customer", "amount"}
    assert schema["properties"]["amount"]["type"] == "integer"
    assert schema["additionalProperties"] is False


# -- string annotations -------------------------------------------------------------------------


def test_string_annotations_are_resolved() -> None:
    def task(ctx: Context, customer: Customer, when: datetime) -> Receipt:
        raise NotImplementedError

    # proof that this module's annotations really are strings
    assert task.__annotations__ == {
        "ctx": "Context",
        "customer": "Customer",
        "when": "datetime",
        "return": "Receipt",
    }
    definition = build(task)
    kwargs = definition.parse_input(
        {"customer": ADA_JSON, "when": "2025-03-04T05:06:07.890000+00:00"}
    )
    assert isinstance(kwargs["customer"], Customer)
    assert kwargs["when"] == PAID_AT
    assert "customer" in definition.output_schema()["properties"]


def test_unresolvable_annotations_are_a_definition_error() -> None:
    class LocalOnly(BaseModel):  # not visible from the module globals
        x: int

    def task(ctx: Any, value: LocalOnly) -> None: ...

    with pytest.raises(WorkflowDefinitionError) as info:
        build(task)
    assert "task" in info.value.message


# -- Conveyor.task ------------------------------------------------------------------------------


def test_bare_decorator_registers_under_the_function_name() -> None:
    app = Conveyor()

    def fetch(ctx: Any, url: str) -> str:
        return url

    registered = app.task(fetch)
    assert registered is fetch
    assert set(app.tasks) == {"fetch"}
    assert app.tasks["fetch"].fn is fetch
    defaults = app.task_defaults("fetch")
    assert defaults is not None
    assert defaults.queue == "default"
    assert defaults.priority is Priority.MEDIUM
    assert defaults.max_attempts == 3  # retries=2 by default
    assert defaults.timeout_s is None


def test_decorator_with_options() -> None:
    app = Conveyor()
    backoff = Backoff.fixed(3.0)

    @app.task(
        name="emails.send",
        queue="emails",
        retries=5,
        backoff=backoff,
        timeout=30,
        priority="high",
    )
    def send(ctx: Any, to: str) -> None: ...

    assert set(app.tasks) == {"emails.send"}
    defaults = app.task_defaults("emails.send")
    assert defaults == TaskDefaults(
        queue="emails", max_attempts=6, backoff=backoff, timeout_s=30, priority=Priority.HIGH
    )
    assert app.task_defaults("send") is None


@pytest.mark.parametrize("retries", [0, 1, 7, 99])
def test_retries_n_gives_n_plus_one_attempts(retries: int) -> None:
    app = Conveyor()

    @app.task(retries=retries)
    def job(a: int) -> None: ...

    defaults = app.task_defaults("job")
    assert defaults is not None
    assert defaults.max_attempts == retries + 1


def test_a_number_backoff_is_an_exponential_base_delay() -> None:
    app = Conveyor()

    @app.task(backoff=2.5)
    def job(a: int) -> None: ...

    defaults = app.task_defaults("job")
    assert defaults is not None
    assert defaults.backoff.kind == "exponential"
    assert defaults.backoff.delay_s == 2.5


def test_a_long_number_backoff_is_accepted() -> None:
    # "backoff=600" means: wait 10 minutes first; the default cap must not reject it
    app = Conveyor()

    @app.task(backoff=600)
    def job(a: int) -> None: ...

    defaults = app.task_defaults("job")
    assert defaults is not None
    assert defaults.backoff.delay_s == 600.0
    assert defaults.backoff.delay_for(1) >= 300.0


def test_duplicate_task_names_are_refused() -> None:
    app = Conveyor()

    @app.task
    def job(a: int) -> None: ...

    def other(b: int) -> None: ...

    with pytest.raises(WorkflowDefinitionError):
        app.task(name="job")(other)
    with pytest.raises(WorkflowDefinitionError):
        app.task(job)
    assert app.tasks["job"].fn is job
    assert app.tasks["job"].params == ("a",)


def test_two_apps_do_not_share_tasks() -> None:
    first, second = Conveyor(), Conveyor()

    def job(a: int) -> None: ...

    first.task(job)
    second.task(job)  # no duplicate: another registry
    assert set(first.tasks) == set(second.tasks) == {"job"}


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"retries": -1}, id="retries-negative"),
        pytest.param({"retries": 100}, id="retries-too-many"),
        pytest.param({"timeout": 0}, id="timeout-zero"),
        pytest.param({"timeout": -5}, id="timeout-negative"),
        pytest.param({"timeout": math.nan}, id="timeout-nan"),
        pytest.param({"timeout": math.inf}, id="timeout-inf"),
        # the engine refuses any job with a timeout above MAX_TIMEOUT_S, so such a task
        # could never be enqueued: refuse it when it is defined
        pytest.param({"timeout": MAX_TIMEOUT_S + 1}, id="timeout-above-engine-max"),
        pytest.param({"queue": ""}, id="queue-empty"),
        pytest.param({"queue": "has space"}, id="queue-space"),
        pytest.param({"queue": "q" * 101}, id="queue-too-long"),
        pytest.param({"queue": "-leading"}, id="queue-leading-dash"),
        pytest.param({"queue": "emails\n"}, id="queue-trailing-newline"),
        pytest.param({"priority": "urgent"}, id="priority-name"),
        pytest.param({"priority": 9}, id="priority-number"),
        pytest.param({"backoff": "fast"}, id="backoff-type"),
        pytest.param({"backoff": -1}, id="backoff-negative"),
        pytest.param({"backoff": True}, id="backoff-bool"),
    ],
)
def test_bad_task_options_are_definition_errors(options: dict[str, Any]) -> None:
    app = Conveyor()

    def job(a: int) -> None: ...

    with pytest.raises(WorkflowDefinitionError):
        app.task(**options)(job)
    assert app.tasks == {}


def test_bad_signature_is_not_registered() -> None:
    app = Conveyor()

    def job(*args: int) -> None: ...

    with pytest.raises(WorkflowDefinitionError):
        app.task(job)
    assert app.tasks == {}


def test_app_validate_input() -> None:
    app = Conveyor()
    app.task(charge)
    app.validate_input(
        "charge",
        {"customer": {"name": "A", "address": {"street": "S", "zip_code": 1}}, "amount": 1},
    )
    with pytest.raises(InvalidInputError) as info:
        app.validate_input("charge", {"amount": "x"})
    assert not isinstance(info.value, UnknownTaskError)
    with pytest.raises(UnknownTaskError):
        app.validate_input("nope", {})
    assert app.task_defaults("nope") is None
