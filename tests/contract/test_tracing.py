"""OpenTelemetry, recorded by the SDK's in-memory exporter: one trace from the enqueuing request
through the job's every attempt, the task's own spans inside the attempt's; nothing recorded,
and no job changed, with tracing off."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import conveyor
from conveyor import JobState

from .test_worker import running, until


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.name == name), key=lambda s: s.start_time or 0)


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


async def test_one_trace_shows_the_request_the_enqueue_and_every_attempt(
    make_app: Callable[..., conveyor.App],
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    app = make_app(tracer_provider=provider)
    tracer = provider.get_tracer("shop")

    @app.task(name="charge", pass_context=True, backoff=conveyor.fixed(0))
    def charge(ctx: conveyor.Context, order: int) -> str:
        with tracer.start_as_current_span("payments.call"):
            if ctx.attempt == 1:
                raise ConnectionError("payments API reset the connection")
        return f"charged {order}"

    with tracer.start_as_current_span("POST /orders") as request:
        job = await charge.enqueue_async(7)
    assert set(job.meta) == {"_trace"}  # the request's context, for the attempts
    async with running(conveyor.Worker(app)):
        assert await job.wait_async(timeout=30) == "charged 7"
    await until(lambda: len(named(exporter.get_finished_spans(), "conveyor.run")) == 2)

    spans = exporter.get_finished_spans()
    trace_id = request.get_span_context().trace_id
    request_id = request.get_span_context().span_id
    [enqueue] = named(spans, "conveyor.enqueue")
    runs = named(spans, "conveyor.run")
    calls = named(spans, "payments.call")
    assert {s.context.trace_id for s in [enqueue, *runs, *calls]} == {trace_id}
    assert enqueue.kind is SpanKind.PRODUCER and parent_of(enqueue) == request_id
    assert dict(enqueue.attributes or {}) == {
        "messaging.system": "conveyor",
        "messaging.operation.type": "send",
        "conveyor.task": "charge",
        "conveyor.queue": "default",
        "conveyor.jobs": 1,
        "conveyor.job.id": job.id,
    }
    assert [parent_of(s) for s in runs] == [request_id, request_id]
    assert [(s.kind, s.attributes and s.attributes["conveyor.attempt"]) for s in runs] == [
        (SpanKind.CONSUMER, 1),
        (SpanKind.CONSUMER, 2),
    ]
    first, second = runs
    assert first.attributes and first.attributes["conveyor.outcome"] == "retrying"
    assert first.attributes["error.type"] == "ConnectionError"
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == "ConnectionError: payments API reset the connection"
    assert second.attributes and second.attributes["conveyor.outcome"] == "succeeded"
    assert second.attributes["conveyor.job.id"] == job.id
    assert second.status.status_code is StatusCode.UNSET
    # the task's own spans (it runs on a thread) are children of their attempt's
    assert [parent_of(c) for c in calls] == [first.context.span_id, second.context.span_id]


async def test_an_enqueue_outside_any_span_starts_a_trace_of_its_own(
    make_app: Callable[..., conveyor.App],
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    app = make_app(tracer_provider=provider)

    @app.task(name="tick")
    async def tick() -> None: ...

    job = await tick.enqueue_async()
    assert job.meta == {}
    await app.run_worker_async(burst=True)
    [run] = named(exporter.get_finished_spans(), "conveyor.run")
    assert run.parent is None
    assert run.attributes and run.attributes["conveyor.outcome"] == "succeeded"


async def test_with_tracing_off_no_span_is_made_and_no_job_carries_a_trace(
    make_app: Callable[..., conveyor.App],
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    """No provider given and none set globally: OpenTelemetry's own default, "off". A span of
    some other provider around the enqueue is no reason to record one."""
    app = make_app()
    seen: list[Any] = []

    @app.task(name="tick")
    def tick() -> None:
        seen.append(1)

    with provider.get_tracer("shop").start_as_current_span("POST /orders"):
        job = await tick.enqueue_async()
    assert job.meta == {} and (await app.get_job_async(job.id)).meta == {}
    await app.run_worker_async(burst=True)
    assert seen == [1]
    assert [s.name for s in exporter.get_finished_spans()] == ["POST /orders"]
    assert (await app.get_job_async(job.id)).state is JobState.SUCCEEDED
