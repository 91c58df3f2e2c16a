"""Alerts: tell a human once when something is down, through log, webhook or e-mail notifiers.

Each alert has a key (`circuit.opened:render-worker`, `job.dead:mail.send`, ...). A key is sent
at most once per `alert_every` seconds (five minutes by default) across the whole cluster: the
store keeps when each key was last sent, and only the caller that claims the key sends it, so
ten workers noticing one outage send one message. Notifiers run on a thread of their own with
retries; a notifier that fails is logged and never blocks or crashes a worker.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from conveyor.errors import BackendUnavailable, ConfigurationError
from conveyor.logging import get_logger
from conveyor.redact import hide_repeats, job_hidden_strings

if TYPE_CHECKING:
    from conveyor.app import App
    from conveyor.circuit import CircuitEvent
    from conveyor.job import Job

log = get_logger("conveyor.alerts")

#: How many times a notifier is tried for one alert, and the pauses between tries.
SEND_DELAYS_S = (1.0, 5.0, 30.0)
SEND_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Alert:
    """One message for a human: what happened (`event`), one sentence (`message`), when, and
    the event's fields."""

    event: str
    message: str
    key: str
    at: float
    fields: Mapping[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        """The JSON body a webhook receives."""
        at = dt.datetime.fromtimestamp(self.at, dt.UTC).isoformat().replace("+00:00", "Z")
        return {"event": self.event, "message": self.message, "at": at, **self.fields}


#: The events alerts are raised for.
EVENTS = ("circuit.opened", "circuit.closed", "job.dead", "queue.backlog", "workers.missing")


class Notifier(Protocol):
    """Sends an alert somewhere; raises if it could not (it is tried again). A notifier may
    also have `wants(alert) -> bool` to take only some alerts."""

    def send(self, alert: Alert) -> None: ...


class Routed:
    """A notifier for some events only: `events=["circuit.opened", "circuit.closed"]` (None,
    the default: every event)."""

    def __init__(self, events: Sequence[str] | None = None) -> None:
        if events is not None and (
            isinstance(events, str) or not set(events) <= set(EVENTS) or not events
        ):
            raise ConfigurationError(f"events= takes a list of {', '.join(EVENTS)}, got {events!r}")
        self.events = None if events is None else frozenset(events)

    def wants(self, alert: Alert) -> bool:
        return self.events is None or alert.event in self.events


class Log(Routed):
    """Alerts as `alert` log events (warning level)."""

    def send(self, alert: Alert) -> None:
        log.warning("alert", alert_event=alert.event, message=alert.message, **alert.fields)

    def __repr__(self) -> str:
        return "Log()"


class Webhook(Routed):
    """A JSON POST of the alert's payload: Slack incoming webhooks, SMS gateways, PagerDuty.
    Secrets belong in `headers` read from the environment, never in code."""

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str] | None = None,
        events: Sequence[str] | None = None,
    ) -> None:
        super().__init__(events)
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigurationError(f"a webhook needs an http(s) URL, got {url!r}")
        self.url = url
        self.headers = dict(headers or {})

    def send(self, alert: Alert) -> None:
        body = json.dumps(alert.payload()).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "conveyor", **self.headers}
        import urllib.request  # here, not at import: only a sender needs it (and ssl)

        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=SEND_TIMEOUT_S) as response:
            if response.status >= 300:
                raise OSError(f"the webhook answered {response.status}")

    def __repr__(self) -> str:  # no headers, no credentials: they may hold secrets
        return f"Webhook({urllib.parse.urlsplit(self.url).hostname})"


class Email(Routed):
    """An e-mail through SMTP: `smtp://user:password@host:25` (STARTTLS when the server offers
    it), or `smtps://…:465`. Read the URL from the environment."""

    def __init__(
        self,
        smtp_url: str,
        to: Sequence[str],
        sender: str | None = None,
        events: Sequence[str] | None = None,
    ) -> None:
        super().__init__(events)
        parts = urllib.parse.urlsplit(smtp_url if isinstance(smtp_url, str) else "")
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ConfigurationError("Email needs smtp://[user:password@]host[:port] or smtps://")
        if isinstance(to, str) or not to or not all(isinstance(a, str) and "@" in a for a in to):
            raise ConfigurationError(f"Email needs a list of addresses in to=, got {to!r}")
        self._url = parts
        self.to = list(to)
        self.sender = sender or f"conveyor@{parts.hostname}"

    def send(self, alert: Alert) -> None:
        import smtplib  # here, not at import: only a sender needs it (and ssl, email)
        from email.message import EmailMessage

        message = EmailMessage()
        message["Subject"] = f"[conveyor] {alert.message}"
        message["From"] = self.sender
        message["To"] = ", ".join(self.to)
        message.set_content(
            f"{alert.message}\n\n" + json.dumps(alert.payload(), indent=2, default=str) + "\n"
        )
        url = self._url
        smtp_class = smtplib.SMTP_SSL if url.scheme == "smtps" else smtplib.SMTP
        port = url.port or (465 if url.scheme == "smtps" else 25)
        assert url.hostname is not None
        with smtp_class(url.hostname, port, timeout=SEND_TIMEOUT_S) as smtp:
            if url.scheme == "smtp":
                smtp.ehlo()
                if smtp.has_extn("starttls"):
                    smtp.starttls()
            if url.username:
                smtp.login(
                    urllib.parse.unquote(url.username), urllib.parse.unquote(url.password or "")
                )
            smtp.send_message(message)

    def __repr__(self) -> str:
        return f"Email({self._url.hostname}, to={len(self.to)} addresses)"


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(value: Any) -> Any:
    """`${NAME}` in a configured string reads the environment variable NAME."""
    if isinstance(value, str):

        def lookup(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ConfigurationError(f"CONVEYOR_ALERTS refers to ${{{name}}}, which is unset")
            return os.environ[name]

        return _ENV.sub(lookup, value)
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


def from_config(text: str) -> list[Notifier]:
    """Notifiers from `CONVEYOR_ALERTS`: a JSON list such as
    `[{"type": "webhook", "url": "${SLACK_URL}"}, {"type": "email", "smtp_url": "${SMTP_URL}",
    "to": ["ops@example.com"]}, {"type": "log"}]`; `${NAME}` reads the environment."""
    try:
        specs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"CONVEYOR_ALERTS is not JSON: {exc}") from None
    if not isinstance(specs, list):
        raise ConfigurationError("CONVEYOR_ALERTS must be a JSON list of notifiers")
    kinds: dict[str, Callable[..., Notifier]] = {"log": Log, "webhook": Webhook, "email": Email}
    notifiers = []
    for spec in specs:
        if not isinstance(spec, dict) or spec.get("type") not in kinds:
            raise ConfigurationError(
                f"each CONVEYOR_ALERTS entry needs a type of {', '.join(kinds)}, got {spec!r}"
            )
        options = _expand({k: v for k, v in spec.items() if k != "type"})
        try:
            notifiers.append(kinds[spec["type"]](**options))
        except TypeError as exc:
            raise ConfigurationError(f"CONVEYOR_ALERTS {spec['type']}: {exc}") from None
    return notifiers


@dataclass(frozen=True)
class BacklogRule:
    """Alert when a queue holds more than `depth` queued jobs or its oldest has waited longer
    than `older_than` seconds."""

    queue: str
    depth: int | None
    older_than: float | None


@dataclass(frozen=True)
class NoWorkerRule:
    """Alert when no live worker has served `queue` for `after` seconds."""

    queue: str
    after: float


class Alerter:
    """An App's alerts: which to send (claimed in the store, once per key and period) and the
    thread that sends them."""

    def __init__(self, app: App, notifiers: Sequence[Notifier], every: float) -> None:
        self.app = app
        self.notifiers = list(notifiers)
        self.every = every
        self.backlog_rules: list[BacklogRule] = []
        self.no_worker_rules: list[NoWorkerRule] = []
        self._queue: queue.Queue[Alert] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def raise_alert(self, event: str, message: str, key: str, **fields: Any) -> None:
        """Send an alert to every notifier, unless its key was sent within `every` seconds
        anywhere in the cluster. Returns at once; the work happens on the alert thread (a
        daemon: an alert still being retried never holds a process up at exit)."""
        if not self.notifiers:
            return
        self._queue.put(Alert(event, message, key, self.app.clock.now(), fields))
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="conveyor-alerts", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            try:
                self._deliver(alert)
            except Exception as exc:  # the thread must outlive any one alert
                log.error("alert.failed", key=alert.key, error=str(exc), exc_info=exc)
            finally:
                self._queue.task_done()

    def _deliver(self, alert: Alert) -> None:
        try:
            if not self.app.backend.sync.claim_alert(alert.key, self.every, alert.at):
                log.debug("alert.suppressed", key=alert.key)
                return
        except BackendUnavailable as exc:
            # Without the store no one can say whether another worker sent it: send it.
            log.warning("alert.claim_failed", key=alert.key, error=str(exc))
        for notifier in self.notifiers:
            wants = getattr(notifier, "wants", None)
            if wants is None or wants(alert):
                self._send(notifier, alert)

    def _send(self, notifier: Notifier, alert: Alert) -> None:
        for attempt, pause in enumerate((0.0, *SEND_DELAYS_S), start=1):
            time.sleep(pause)
            try:
                notifier.send(alert)
            except Exception as exc:  # a notifier's failure is logged, retried, contained
                log.warning(
                    "alert.send_failed",
                    notifier=repr(notifier),
                    key=alert.key,
                    attempt=attempt,
                    error=f"{type(exc).__name__}: {exc}",
                )
                continue
            log.info("alert.sent", notifier=repr(notifier), key=alert.key, alert_event=alert.event)
            return
        log.error("alert.given_up", notifier=repr(notifier), key=alert.key, message=alert.message)

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until every alert raised so far is sent or given up; False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    # -- the rules --------------------------------------------------------------------------

    def job_dead(self, job: Job, error: Mapping[str, Any] | None) -> None:
        what = "an error" if not error else f"{error.get('type')}: {error.get('message')}"
        # an alert goes to people: what the App's redaction hid of the arguments stays out
        what = hide_repeats(what, job_hidden_strings(job, self.app.redact))
        self.raise_alert(
            "job.dead",
            f"{job.task} job {job.id} is dead after {what}",
            f"job.dead:{job.task}",
            job_id=job.id,
            task=job.task,
            queue=job.queue,
            error=what,
        )

    def backlog(self, rule: BacklogRule, depth: int, age: float | None) -> None:
        oldest = "" if age is None else f", the oldest waiting {_duration(age)}"
        self.raise_alert(
            "queue.backlog",
            f"queue {rule.queue} is backing up: {depth} jobs queued{oldest}",
            f"queue.backlog:{rule.queue}",
            queue=rule.queue,
            depth=depth,
            oldest_age_s=age,
        )

    def workers_missing(self, rule: NoWorkerRule, missing_for: float) -> None:
        self.raise_alert(
            "workers.missing",
            f"no live worker has served queue {rule.queue} for {_duration(missing_for)}",
            f"workers.missing:{rule.queue}",
            queue=rule.queue,
            missing_for_s=missing_for,
        )

    def circuit_changed(self, change: CircuitEvent) -> None:
        if change.event == "opened":
            jobs = "job" if change.held == 1 else "jobs"
            self.raise_alert(
                "circuit.opened",
                f"{change.name} is down: {change.held} {jobs} held",
                f"circuit.opened:{change.name}",
                circuit=change.name,
                reason=change.reason,
                held=change.held,
            )
        elif change.event == "closed":
            minutes = f" after {_duration(change.open_for)}" if change.open_for else ""
            self.raise_alert(
                "circuit.closed",
                f"{change.name} is back{minutes}: {change.held} held jobs run again",
                f"circuit.closed:{change.name}",
                circuit=change.name,
                reason=change.reason,
                held=change.held,
                open_for_s=change.open_for,
            )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
