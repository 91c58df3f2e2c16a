"""The exceptions users catch, and the two that tasks raise to steer their own retries."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.job import Job


#: The longest delay conveyor stores: about a hundred years.
MAX_DELAY_S = 100 * 365.25 * 86400


class ConveyorError(Exception):
    """Base class of every error conveyor raises."""


class ConfigurationError(ConveyorError, ValueError):
    """The App was set up wrongly: a bad URL, an unusable database file, a bad setting."""


class NotAConveyorDatabase(ConfigurationError):
    """The database file exists but holds something other than conveyor's schema."""


class ValidationError(ConveyorError, ValueError):
    """A job was refused at enqueue time; nothing was stored."""


class UnknownTask(ValidationError, LookupError):
    """No task is registered under the given name."""


class PayloadTooLarge(ValidationError):
    """The job's arguments and meta, as JSON, are over the size limit."""


class JobNotFound(ConveyorError, LookupError):
    """No job has the given id."""


class InvalidTransition(ConveyorError):
    """The job is not in a state that allows the requested change."""


class JobFailed(ConveyorError):
    """`Job.wait()` saw the job end dead or cancelled."""

    def __init__(self, job: Job) -> None:
        last = job.errors[-1]["message"] if job.errors else None
        detail = f": {last}" if last else ""
        super().__init__(f"job {job.id} ({job.task}) ended {job.state.value}{detail}")
        self.job = job


class WaitTimeout(ConveyorError, TimeoutError):
    """`Job.wait(timeout)` returned before the job finished."""


class TaskTimeout(ConveyorError, TimeoutError):
    """A task ran past its `timeout`."""


class Retry(Exception):
    """Raised by a task to be retried after `delay` seconds (the attempt counts)."""

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        if delay is not None and not 0 <= delay <= MAX_DELAY_S:
            raise ValueError(f"Retry delay must be a number of seconds >= 0, got {delay!r}")
        super().__init__(reason)
        self.delay = delay
        self.reason = reason


class Discard(Exception):
    """Raised by a task to give up at once: the job goes straight to the dead-letter queue."""

    def __init__(self, reason: str = "discarded") -> None:
        super().__init__(reason)
        self.reason = reason


class DownstreamDown(Exception):
    """Raised by a task (or recognised by conveyor) when the service it calls is down: behind a
    circuit, such failures never cost the job an attempt, and enough in a row open the circuit.
    """

    def __init__(self, message: str = "the downstream service is down") -> None:
        super().__init__(message)


def describe(value: Any) -> str:
    """A short, safe description of a value for error messages."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class BackendUnavailable(ConveyorError):
    """The store cannot serve now: it could not be reached, did not answer in time, refused to
    write (read-only, disk full, too many connections) or stayed locked past the timeout. The
    driver's own error is the cause (`__cause__`).

    Nothing was written — except that an enqueue cut off while its commit was on the way may
    have been stored after all: retry it with the same `unique_key` to be sure to store it
    once (see docs/reliability.md)."""


class LeaseLost(ConveyorError):
    """A worker could not keep a job's lease: no heartbeat reached the store in time, or the
    store gave the job to another worker. The job was stopped there; the attempt counts."""
