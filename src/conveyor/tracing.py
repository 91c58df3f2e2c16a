"""OpenTelemetry spans (the `otel` extra): one for each enqueue call and one for each attempt,
with the trace context carried in the job from the enqueuing code to every attempt, so that one
trace shows the request, the job and its retries.

- An enqueue inside a span (a web request's, say) records that span's context in the job's
  `meta` under `"_trace"` (W3C `traceparent`, and `tracestate` if any); outside any span it
  records nothing. `conveyor.enqueue` is a span of its own around the store's write (kind
  PRODUCER), with the task, the queue, how many jobs, and the id of a single one.
- Every attempt is a span `conveyor.run` (kind CONSUMER), a child of the recorded context, with
  the job id, task, queue, attempt and outcome (`conveyor.outcome`), and on failure the error
  (type and message) with an error status. The task runs inside it: spans the task makes are
  its children.

The tracer provider is the App's `tracer_provider`, else OpenTelemetry's global one. Without
the `opentelemetry-api` package, or while no provider is set (OpenTelemetry's default), nothing
here runs beyond one check per enqueue call and attempt, OpenTelemetry is not even imported,
and no job's meta changes. (With the SDK disabled, `OTEL_SDK_DISABLED=true`, its spans are
made and not recorded.)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.job import Job, NewJob, Outcome

#: The key of a job's meta that carries the enqueuing code's trace context.
META_KEY = "_trace"
SCOPE = "conveyor"

_UNKNOWN = object()
#: the last provider asked for a tracer, and its tracer
_last: tuple[Any, Any] = (None, None)


def _global_provider() -> Any:
    """OpenTelemetry's global tracer provider, None while none is set. OpenTelemetry is not
    imported for this: a process that set a provider has imported it already (importing it
    costs a worker's start about 16 ms). `get_tracer_provider()` reads the environment at
    every call while none is set (a microsecond): its variable is read directly where it
    exists."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    provider = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN)
    if provider is _UNKNOWN:
        provider = trace.get_tracer_provider()
    off = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
    return None if provider is None or isinstance(provider, off) else provider


def tracer(provider: Any) -> Any:
    """The tracer to record with, or None while tracing is off: checked once per enqueue call
    and per attempt, so it costs next to nothing when off."""
    global _last
    if provider is None and (provider := _global_provider()) is None:
        return None
    cached, recorder = _last
    if cached is not provider:
        recorder = provider.get_tracer(SCOPE)
        _last = (provider, recorder)
    return recorder


def trace_context(provider: Any) -> dict[str, str] | None:
    """The current span's context as a carrier to keep in a job's meta, or None outside a
    span (or with tracing off)."""
    if tracer(provider) is None:
        return None
    from opentelemetry import propagate, trace

    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


@contextlib.contextmanager
def enqueueing(recorder: Any, jobs: Sequence[NewJob]) -> Iterator[Any]:
    """A span around the store's write of an enqueue call, by `recorder` (a `tracer()`)."""
    from opentelemetry.trace import SpanKind

    first = jobs[0]
    attributes = {
        "messaging.system": SCOPE,
        "messaging.operation.type": "send",
        "conveyor.task": first.task,
        "conveyor.queue": first.queue,
        "conveyor.jobs": len(jobs),
    }
    with recorder.start_as_current_span(
        "conveyor.enqueue", kind=SpanKind.PRODUCER, attributes=attributes
    ) as span:
        yield span


def enqueued(span: Any, jobs: Sequence[Job]) -> None:
    if len(jobs) == 1:
        span.set_attribute("conveyor.job.id", jobs[0].id)


@contextlib.contextmanager
def attempt(recorder: Any, job: Job) -> Iterator[Any]:
    """The span of one attempt by `recorder` (a `tracer()`), current while the task runs."""
    from opentelemetry import context, propagate, trace
    from opentelemetry.trace import SpanKind

    carrier = job.meta.get(META_KEY) if isinstance(job.meta, dict) else None
    parent = propagate.extract(carrier) if isinstance(carrier, dict) else None
    attributes = {
        "messaging.system": SCOPE,
        "messaging.operation.type": "process",
        "conveyor.job.id": job.id,
        "conveyor.task": job.task,
        "conveyor.queue": job.queue,
        "conveyor.attempt": job.attempt,
    }
    span = recorder.start_span(
        "conveyor.run", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    )
    token = context.attach(trace.set_span_in_context(span))
    try:
        yield span
    finally:
        context.detach(token)
        span.end()


def outcome(span: Any, result: Outcome) -> None:
    """Record how the attempt ended on its span."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("conveyor.outcome", result.state.value)
    if result.error is not None:
        kind, message = str(result.error.get("type")), str(result.error.get("message"))
        span.set_attribute("error.type", kind)
        span.set_status(Status(StatusCode.ERROR, f"{kind}: {message}"))
