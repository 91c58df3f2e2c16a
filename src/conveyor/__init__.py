"""conveyor: durable background jobs for Python."""

from conveyor.app import App
from conveyor.clock import Clock, FrozenClock, SystemClock
from conveyor.context import Context
from conveyor.errors import (
    BackendUnavailable,
    ConfigurationError,
    ConveyorError,
    Discard,
    DownstreamDown,
    InvalidTransition,
    JobFailed,
    JobNotFound,
    LeaseLost,
    NotAConveyorDatabase,
    PayloadTooLarge,
    Retry,
    TaskTimeout,
    UnknownTask,
    ValidationError,
    WaitTimeout,
)
from conveyor.job import HistoryEntry, Job, JobState, WorkerInfo
from conveyor.retry import exponential, fixed
from conveyor.task import Signature, Task
from conveyor.worker import Worker
from conveyor.workflow import Workflow, chain, group

__version__ = "0.1.0"

__all__ = [
    "App",
    "BackendUnavailable",
    "Clock",
    "ConfigurationError",
    "Context",
    "ConveyorError",
    "Discard",
    "DownstreamDown",
    "FrozenClock",
    "HistoryEntry",
    "InvalidTransition",
    "Job",
    "JobFailed",
    "JobNotFound",
    "JobState",
    "LeaseLost",
    "NotAConveyorDatabase",
    "PayloadTooLarge",
    "Retry",
    "Signature",
    "SystemClock",
    "Task",
    "TaskTimeout",
    "UnknownTask",
    "ValidationError",
    "WaitTimeout",
    "Worker",
    "WorkerInfo",
    "Workflow",
    "__version__",
    "chain",
    "exponential",
    "fixed",
    "group",
]
