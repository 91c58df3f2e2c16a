"""Alerts through real parts: a downstream HTTP service the test stops and starts, a webhook
receiver and an SMTP server (aiosmtpd), all on 127.0.0.1. An outage holds the jobs with no
attempt spent and sends one alert; the probe (on a frozen clock's schedule) finds the service
back and every job runs; a storm of failures sends one alert."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

import conveyor
from conveyor import JobState
from conveyor.circuit import CircuitState
from conveyor.notify import Email, Log, Webhook, from_config
from conveyor.testing import wait_rounds

from .test_worker import running, until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A small HTTP server on 127.0.0.1 that can be stopped and started on the same port."""

    def __init__(self, handler: Callable[[BaseHTTPRequestHandler], None]) -> None:
        self.port = free_port()
        self.handle = handler
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.handle(self)

            do_POST = do_GET

            def log_message(self, *args: Any) -> None:
                pass  # quiet

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def answer(request: BaseHTTPRequestHandler, status: int, body: bytes = b"ok") -> None:
    request.send_response(status)
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    request.wfile.write(body)


@pytest.fixture
def downstream() -> Iterator[Server]:
    server = Server(lambda request: answer(request, 200))
    yield server
    server.stop()


class Receiver:
    """A webhook receiver: the JSON bodies it got, in order. `fail_first` answers 500 first."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.refused = 0
        self.fail_first = fail_first
        self.server = Server(self._handle)

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        if self.refused < self.fail_first:
            self.refused += 1
            answer(request, 500, b"not now")
            return
        length = int(request.headers.get("Content-Length", "0"))
        self.bodies.append(json.loads(request.rfile.read(length)))
        answer(request, 204, b"")

    def events(self) -> list[str]:
        return [b["event"] for b in self.bodies]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    found.server.start()
    yield found
    found.server.stop()


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


def subjects(inbox: Inbox) -> list[str]:
    return [m["Subject"] for m in inbox.messages]


async def test_an_outage_alerts_once_holds_the_jobs_and_they_run_when_it_is_back(
    make_app: Callable[..., conveyor.App],
    clock: conveyor.FrozenClock,
    downstream: Server,
    receiver: Receiver,
    smtp: tuple[Inbox, int],
) -> None:
    inbox, port = smtp
    notifiers = [
        Webhook(receiver.server.url + "/hook", headers={"Authorization": "Bearer s3cret"}),
        Email(f"smtp://127.0.0.1:{port}", to=["ops@example.com"]),
        Email(f"smtp://127.0.0.1:{port}", to=["ceo@example.com"], events=["job.dead"]),
        Log(),
    ]
    app = make_app(clock=clock, notifiers=notifiers)
    render = app.circuit("render-worker", failure_threshold=3, probe=downstream.url + "/health")

    @app.task(name="assemble", circuit=render, backoff=conveyor.fixed(0), max_attempts=1)
    def assemble(episode: int) -> str:
        import urllib.request

        with urllib.request.urlopen(f"{downstream.url}/render/{episode}", timeout=5) as r:
            return str(r.read().decode())

    downstream.start()
    async with running(conveyor.Worker(app, concurrency=2)):
        assert await assemble.enqueue(99).wait_async(timeout=20) == "ok"  # the service is up
        downstream.stop()  # and now it is down
        jobs = assemble.enqueue_many([(i,) for i in range(6)])
        await until(lambda: [c.state for c in app.circuit_states()] == [CircuitState.OPEN])
        await until(lambda: receiver.events() == ["circuit.opened"] and len(inbox.messages) == 1)
        settled = {JobState.QUEUED, JobState.RETRYING}
        await until(lambda: {app.get_job(j.id).state for j in jobs} <= settled)
        held = [app.get_job(j.id) for j in jobs]
        assert {j.attempt for j in held} == {0}  # max_attempts=1, yet nothing is dead
        assert {j.held_by for j in held} == {"render-worker"}

        downstream.start()
        clock.advance(60)  # the first probe of the default schedule
        await until(lambda: Counter(app.get_job(j.id).state for j in jobs)[JobState.SUCCEEDED] == 6)
        await until(lambda: receiver.events() == ["circuit.opened", "circuit.closed"])
    assert app.alerts.flush(10)
    assert [app.get_job(j.id).result for j in jobs] == ["ok"] * 6

    opened, closed = receiver.bodies
    assert opened["message"] == "render-worker is down: 6 jobs held"
    assert opened["circuit"] == "render-worker" and opened["held"] == 6
    assert "Connection refused" in opened["reason"] and opened["at"].endswith("Z")
    # the job let through while half-open has run: five are left to run
    assert closed["message"] == "render-worker is back after 60 s: 5 held jobs run again"
    assert subjects(inbox) == [  # the notifier for dead jobs only got nothing
        "[conveyor] render-worker is down: 6 jobs held",
        "[conveyor] render-worker is back after 60 s: 5 held jobs run again",
    ]
    assert inbox.messages[0]["To"] == "ops@example.com"


async def test_a_storm_of_failures_sends_one_alert(
    make_app: Callable[..., conveyor.App], receiver: Receiver
) -> None:
    apps = [make_app(notifiers=[Webhook(receiver.server.url)]) for _ in range(2)]
    for app in apps:

        @app.task(name="flaky", alert_on_dead=True, max_attempts=1)
        def flaky(n: int) -> None:
            raise RuntimeError(f"broken input {n}")

    apps[0].tasks["flaky"].enqueue_many([(i,) for i in range(1000)])
    await asyncio.gather(*(a.run_worker_async(concurrency=20, burst=True) for a in apps))
    assert apps[0].queue_stats() == {"default": {JobState.DEAD: 1000}}
    for app in apps:
        assert app.alerts.flush(20)
    assert receiver.events() == ["job.dead"]  # two workers, 1,000 dead jobs: one message
    assert receiver.bodies[0]["task"] == "flaky"
    assert receiver.bodies[0]["message"].startswith("flaky job ")


async def test_a_failing_notifier_is_retried_and_never_stops_the_worker(
    make_app: Callable[..., conveyor.App],
) -> None:
    receiver = Receiver(fail_first=1)
    receiver.server.start()
    try:
        app = make_app(notifiers=[Webhook(receiver.server.url)])

        @app.task(name="doomed", alert_on_dead=True, max_attempts=1)
        def doomed() -> None:
            raise RuntimeError("no")

        @app.task(name="fine")
        def fine() -> str:
            return "done"

        dead, ok = doomed.enqueue(), fine.enqueue()
        await app.run_worker_async(burst=True)
        assert app.get_job(ok.id).result == "done"
        assert app.alerts.flush(20)
        assert receiver.refused == 1 and receiver.events() == ["job.dead"]
        assert receiver.bodies[0]["job_id"] == dead.id
    finally:
        receiver.server.stop()


async def test_backlog_and_missing_worker_rules(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock, receiver: Receiver
) -> None:
    app = make_app(clock=clock, notifiers=[Webhook(receiver.server.url)], alert_every="1h")
    app.alert_on_backlog("video", depth=3)
    app.alert_on_backlog("mail", older_than="10m")
    app.alert_on_no_worker("video", after="5m")

    @app.task(name="render", queue="video")
    def render(n: int) -> None: ...

    @app.task(name="send", queue="mail")
    def send(n: int) -> None: ...

    render.enqueue_many([(i,) for i in range(4)])
    send.enqueue(1)
    worker = conveyor.Worker(app, queues=["default"])  # serves neither queue
    async with running(worker):
        await until(lambda: hasattr(worker, "maintainer") and worker.maintainer.running)
        await wait_rounds(worker.watch, kick=True)
        await until(lambda: app.alerts.flush(5) and receiver.events() == ["queue.backlog"])
        clock.advance(11 * 60)  # the mail job has waited 11 minutes; no worker for video
        await wait_rounds(worker.watch, kick=True)
        assert app.alerts.flush(10)
    assert sorted(receiver.events()) == ["queue.backlog", "queue.backlog", "workers.missing"]
    by_queue = {(b["event"], b["queue"]): b for b in receiver.bodies}
    assert by_queue["queue.backlog", "video"]["depth"] == 4
    assert by_queue["queue.backlog", "mail"]["oldest_age_s"] == pytest.approx(660, abs=1)
    assert by_queue["workers.missing", "video"]["message"].startswith(
        "no live worker has served queue video for "
    )


def test_notifiers_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_URL", "https://hooks.example.com/T0")
    monkeypatch.setenv("SMTP_URL", "smtp://user:pw@mail.example.com:587")
    found = from_config(
        '[{"type": "webhook", "url": "${HOOK_URL}", "headers": {"X-Key": "k"}},'
        ' {"type": "email", "smtp_url": "${SMTP_URL}", "to": ["ops@example.com"]},'
        ' {"type": "log"}]'
    )
    assert [type(n) for n in found] == [Webhook, Email, Log]
    assert repr(found[0]) == "Webhook(hooks.example.com)"  # no secrets in logs
    assert "pw" not in repr(found[1])
    for bad, message in [
        ("{", "not JSON"),
        ('{"type": "log"}', "a JSON list"),
        ('[{"type": "pager"}]', "needs a type of"),
        ('[{"type": "webhook", "url": "${NOPE}"}]', "NOPE"),
        ('[{"type": "webhook", "url": "ftp://x"}]', "http"),
        ('[{"type": "email", "smtp_url": "smtp://h", "to": "ops@example.com"}]', "list"),
        ('[{"type": "webhook", "link": "https://x"}]', "webhook"),
        ('[{"type": "log", "events": ["circuit.opend"]}]', "events= takes a list of"),
    ]:
        with pytest.raises(conveyor.ConfigurationError, match=message):
            from_config(bad)
    routed = from_config('[{"type": "log", "events": ["job.dead"]}]')[0]
    assert isinstance(routed, Log) and routed.events == frozenset({"job.dead"})
    monkeypatch.setenv("CONVEYOR_ALERTS", '[{"type": "webhook", "url": "${HOOK_URL}"}]')
    app = conveyor.App("sqlite:///unused.db")
    assert [type(n) for n in app.alerts.notifiers] == [Webhook]
