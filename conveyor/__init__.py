"""Conveyor: durable jobs and workflows for AI-agent pipelines.

The public API::

    from conveyor import Conveyor, Context, Backoff, Priority
    from conveyor import NonRetryableError, TaskFailure, ConveyorError
"""

from conveyor.app import Conveyor
from conveyor.domain.priority import Priority
from conveyor.domain.retry import Backoff
from conveyor.errors import (
    ConveyorError,
    JobCancelled,
    NonRetryableError,
    TaskFailure,
)
from conveyor.worker.context import Context

__all__ = [
    "Backoff",
    "Context",
    "Conveyor",
    "ConveyorError",
    "JobCancelled",
    "NonRetryableError",
    "Priority",
    "TaskFailure",
]

__version__ = "0.1.0"
