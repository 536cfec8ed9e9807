"""The one exception tree of Conveyor.

Everything Conveyor raises on purpose derives from :class:`ConveyorError`, so callers can
catch one root. The API maps each branch to one HTTP status; the CLI maps them to a
message and a non-zero exit code.

::

    ConveyorError
    ├── InvalidInputError            bad input from a caller (422 / CLI exit 2)
    │   ├── UnknownTaskError         a task name nobody registered
    │   ├── WorkflowDefinitionError  unknown task or dependency, cycle, duplicate step id
    │   ├── AnswerValidationError    clarification answers that break their schemas
    │   └── IdempotencyMismatchError an idempotency key reused with a different request
    ├── NotFoundError                no such resource, or not the caller's (404)
    ├── ConflictError                the resource is in the wrong state (409)
    │   ├── InvalidTransitionError   a state change the transition table forbids
    │   ├── DependenciesNotMetError  manual run of a step whose dependencies are not done
    │   └── PreconditionFailedError  an If-Match naming a version that is no longer current
    ├── GoneError                    the thing expired (410)
    ├── AuthenticationError          missing or bad credentials (401)
    ├── PermissionDeniedError        authenticated, but the role does not allow it (403)
    ├── QuotaExceededError           a per-user or per-request cap was hit (429 / 413)
    ├── LeaseLostError               an attempt's lease was taken over; stop writing
    ├── ServiceUnavailableError      something we depend on cannot be reached (503)
    │   └── StoreUnavailableError    the database cannot be reached
    ├── ConfigurationError           settings that cannot work; refuse to start
    ├── TaskFailure                  raised by task code to steer retries
    │   └── NonRetryableError        fail now, do not retry
    │       ├── BudgetExceededError  an LLM call would exceed the execution's budget
    │       └── UnsafeRequestError   ctx.http refused a URL (not public, bad scheme)
    └── JobCancelled                 raised inside task code once its job was cancelled
"""

from __future__ import annotations

from typing import Any


class ConveyorError(Exception):
    """Root of every error Conveyor raises on purpose."""

    code = "conveyor_error"
    title = "Conveyor error"

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class InvalidInputError(ConveyorError):
    code = "invalid_input"
    title = "Invalid input"


class UnknownTaskError(InvalidInputError):
    code = "unknown_task"
    title = "Unknown task"


class WorkflowDefinitionError(InvalidInputError):
    code = "invalid_workflow"
    title = "Invalid workflow definition"


class AnswerValidationError(InvalidInputError):
    code = "invalid_answers"
    title = "Answers do not match their questions' schemas"


class IdempotencyMismatchError(InvalidInputError):
    code = "idempotency_mismatch"
    title = "Idempotency key reused with a different request"


class NotFoundError(ConveyorError):
    code = "not_found"
    title = "Not found"


class ConflictError(ConveyorError):
    code = "conflict"
    title = "Conflict"


class InvalidTransitionError(ConflictError):
    code = "invalid_transition"
    title = "Invalid state transition"


class DependenciesNotMetError(ConflictError):
    code = "dependencies_not_met"
    title = "Dependencies not completed"


class PreconditionFailedError(ConflictError):
    """The resource changed since the version the caller named (HTTP 412)."""

    code = "precondition_failed"
    title = "Precondition failed"


class GoneError(ConveyorError):
    code = "gone"
    title = "Gone"


class AuthenticationError(ConveyorError):
    code = "unauthenticated"
    title = "Authentication required"


class PermissionDeniedError(ConveyorError):
    code = "forbidden"
    title = "Forbidden"


class QuotaExceededError(ConveyorError):
    code = "quota_exceeded"
    title = "Quota exceeded"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class LeaseLostError(ConveyorError):
    """The attempt no longer holds the job's lease: another worker may own it now."""

    code = "lease_lost"
    title = "Lease lost"


class ServiceUnavailableError(ConveyorError):
    code = "unavailable"
    title = "Service unavailable"


class StoreUnavailableError(ServiceUnavailableError):
    code = "store_unavailable"
    title = "Database unavailable"


class ConfigurationError(ConveyorError):
    code = "configuration"
    title = "Configuration error"


class TaskFailure(ConveyorError):
    """Raise from task code to fail the attempt with a clean message (retried if allowed)."""

    code = "task_failed"
    title = "Task failed"


class NonRetryableError(TaskFailure):
    """Raise from task code to fail the job at once, whatever attempts remain."""

    code = "non_retryable"
    title = "Task failed (not retryable)"


class BudgetExceededError(NonRetryableError):
    """An LLM call was refused: it would take the execution past its ``budget_usd``."""

    code = "budget_exceeded"
    title = "Budget exceeded"


class UnsafeRequestError(NonRetryableError):
    """``ctx.http`` refused a URL: not http(s), or it resolves to a non-public address."""

    code = "unsafe_request"
    title = "Request refused"


class JobCancelled(ConveyorError):
    """Raised by :meth:`Context.raise_if_cancelled` once the job was asked to stop."""

    code = "cancelled"
    title = "Job cancelled"
