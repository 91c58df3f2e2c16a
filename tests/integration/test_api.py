"""The HTTP API on a real store: roles and tokens, errors as JSON, enqueue and steering, the
circuit close from outside; and `conveyor serve` as a real server process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

import conveyor
from conveyor import JobState
from conveyor.circuit import Action, CircuitState
from conveyor.web import Tokens, create_api

#: A test client on this machine (a server without tokens answers no other).
LOOPBACK = ("127.0.0.1", 50000)

ADMIN = "admin-token-0123456789abcdef"
READER = "read-token-0123456789abcdef"
TOKENS = f"admin:{ADMIN},read:{READER}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def tasks(app: conveyor.App) -> conveyor.App:
    render = app.circuit("render-worker", failure_threshold=1)

    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="login", circuit=render)
    def login(user: str, password: str, options: dict[str, Any] | None = None) -> None: ...

    @app.task(name="fail", max_attempts=1)
    def fail(kind: str) -> None:
        raise {"value": ValueError, "key": KeyError}[kind](f"{kind} went wrong")

    return app


@pytest.fixture
def client(tasks: conveyor.App) -> Iterator[TestClient]:
    with TestClient(create_api(tasks, Tokens.parse(TOKENS))) as found:
        yield found


ENDPOINTS = [
    ("GET", "/api/jobs", "read"),
    ("GET", "/api/jobs/1", "read"),
    ("GET", "/api/dlq", "read"),
    ("GET", "/api/queues", "read"),
    ("GET", "/api/workers", "read"),
    ("GET", "/api/cron", "read"),
    ("GET", "/api/circuits", "read"),
    ("POST", "/api/jobs", "admin"),
    ("POST", "/api/jobs/1/cancel", "admin"),
    ("POST", "/api/jobs/1/retry", "admin"),
    ("POST", "/api/queues/default/pause", "admin"),
    ("POST", "/api/queues/default/resume", "admin"),
    ("POST", "/api/circuits/render-worker/close", "admin"),
    ("GET", "/api/overview", "read"),
    ("GET", "/api/dlq/groups", "read"),
    ("POST", "/api/jobs/bulk", "admin"),
    ("POST", "/api/dlq/retry", "admin"),
    ("POST", "/api/dlq/purge", "admin"),
    ("GET", "/metrics", "read"),
]
BODIES: dict[str, Any] = {
    "/api/jobs": {"task": "add", "args": [1, 2]},
    "/api/jobs/bulk": {"action": "retry", "ids": [1]},
    "/api/dlq/retry": {},
    "/api/dlq/purge": {},
}


@pytest.mark.parametrize(("method", "path", "needed"), ENDPOINTS)
def test_every_endpoint_wants_the_right_role(
    client: TestClient, tasks: conveyor.App, method: str, path: str, needed: str
) -> None:
    tasks.tasks["add"].enqueue(1, 2)  # job 1
    body = BODIES.get(path) if method == "POST" else None
    nobody = client.request(method, path, json=body)
    assert nobody.status_code == 401
    assert nobody.json()["error"] == "this needs a bearer token"
    stranger = client.request(method, path, json=body, headers=bearer("x" * 30))
    assert (stranger.status_code, stranger.json()["error"]) == (401, "unknown token")
    reader = client.request(method, path, json=body, headers=bearer(READER))
    if needed == "admin":
        assert (reader.status_code, reader.json()["error"]) == (403, "this needs an admin token")
        assert tasks.get_job(1).state is JobState.QUEUED  # nothing was done
    else:
        assert reader.status_code == 200, reader.text
    admin = client.request(method, path, json=body, headers=bearer(ADMIN))
    assert admin.status_code in (200, 201, 409), admin.text  # retrying a queued job: 409
    in_query = client.request(method, f"{path}?token={ADMIN}", json=body)
    assert in_query.status_code == 400
    assert "query string" in in_query.json()["error"]


def test_enqueue_and_read_a_job(client: TestClient, tasks: conveyor.App) -> None:
    made = client.post(
        "/api/jobs",
        headers=bearer(ADMIN),
        json={"task": "add", "args": [2, 3], "priority": "high", "queue": "math"},
    )
    assert made.status_code == 201, made.text
    job = made.json()
    assert (job["task"], job["args"], job["priority"], job["queue"], job["state"]) == (
        "add",
        [2, 3],
        3,
        "math",
        "queued",
    )
    assert job["status_message"] == "Queued"
    tasks.run_worker(queues=["math"], burst=True)
    found = client.get(f"/api/jobs/{job['id']}", headers=bearer(READER)).json()
    assert (found["state"], found["result"]) == ("succeeded", 5)
    assert [h["to"] for h in found["history"]] == ["queued", "running", "succeeded"]
    listed = client.get("/api/jobs", params={"state": "succeeded"}, headers=bearer(READER))
    assert [j["id"] for j in listed.json()["jobs"]] == [job["id"]]


def test_bad_input_is_refused_with_a_json_error_and_nothing_is_stored(
    client: TestClient, tasks: conveyor.App
) -> None:
    admin = bearer(ADMIN)
    cases = [
        ({"task": "nope"}, 404, "unknown task 'nope'"),
        ({"task": "add", "args": [1]}, 422, "missing a required argument"),
        ({"task": "add", "args": [1, 2], "priority": 11}, 422, "priority"),
        ({"task": "add", "args": [1, 2], "delay": -1}, 422, "delay"),
        ({"task": "add", "args": [1, 2], "queue": "bad queue"}, 422, "bad queue name"),
        ({"args": [1, 2]}, 422, "invalid request"),
        ({"task": "add", "surprise": 1}, 422, "invalid request"),
    ]
    for body, status, error in cases:
        answer = client.post("/api/jobs", json=body, headers=admin)
        assert answer.status_code == status, (body, answer.text)
        assert error in answer.json()["error"], (body, answer.json())
    assert client.post("/api/jobs", content=b"{", headers=admin).status_code == 422
    assert tasks.queue_stats() == {}
    missing = client.get("/api/jobs/999", headers=admin)
    assert (missing.status_code, missing.json()["error"]) == (404, "no job with id 999")
    for method, path, body in [
        ("GET", "/api/jobs/9223372036854775808", None),
        ("GET", "/api/jobs?before_id=9223372036854775808", None),
        ("POST", "/api/jobs/bulk", {"action": "purge", "ids": [2**63]}),
        ("POST", "/api/dlq/retry", {"queue": "a\u0000"}),
    ]:
        answer = client.request(method, path, json=body, headers=admin)
        assert answer.status_code == 422, (path, answer.text)
    for path in ["/api/jobs?queue=%00", "/api/dlq/groups?queue=a%00b", "/api/circuits/%00/close"]:
        answer = client.request("POST" if "close" in path else "GET", path, headers=admin)
        assert answer.status_code == 400, (path, answer.text)
        assert answer.json()["error"] == "the path or query string holds a NUL character"
    assert client.get("/api/nowhere", headers=admin).json() == {
        "error": "Not Found",
        "detail": None,
    }


def test_secrets_in_arguments_are_not_shown(client: TestClient, tasks: conveyor.App) -> None:
    job = tasks.tasks["login"].enqueue("ann", password="hunter2", options={"api_key": "k"})
    shown = client.get(f"/api/jobs/{job.id}", headers=bearer(READER)).json()
    assert shown["args"] == ["ann"]
    assert shown["kwargs"] == {"password": "***", "options": {"api_key": "***"}}
    assert "hunter2" not in str(shown)


def test_cancel_retry_and_pause(client: TestClient, tasks: conveyor.App) -> None:
    admin = bearer(ADMIN)
    job = tasks.tasks["add"].enqueue(1, 1)
    cancelled = client.post(f"/api/jobs/{job.id}/cancel", headers=admin).json()
    assert cancelled["state"] == "cancelled"
    assert tasks.job_history(job.id)[-1].note == "cancelled over HTTP"
    assert client.post(f"/api/jobs/{job.id}/retry", headers=admin).json()["state"] == "queued"
    again = client.post(f"/api/jobs/{job.id}/retry", headers=admin)
    assert again.status_code == 409 and "only dead or cancelled" in again.json()["error"]
    paused = client.post("/api/queues/default/pause", headers=admin).json()
    assert paused == {"queue": "default", "changed": True, "paused": True}
    assert client.get("/api/queues", headers=admin).json()["default"]["paused"] is True
    client.post("/api/queues/default/resume", headers=admin)
    assert tasks.paused_queues() == []


def test_a_circuit_is_closed_from_outside(client: TestClient, tasks: conveyor.App) -> None:
    held = tasks.tasks["login"].enqueue("ann", "pw")
    tasks.backend.sync.change_circuit(
        "render-worker", Action.FAILURE, tasks.clock.now(), threshold=1, reason="refused"
    )
    shown = client.get("/api/circuits", headers=bearer(READER)).json()
    assert shown["circuits"][0]["state"] == "open" and shown["circuits"][0]["held"] == 1
    job = client.get(f"/api/jobs/{held.id}", headers=bearer(READER)).json()
    assert job["held_by"] == "render-worker"
    assert job["status_message"] == "Queued — will run when render-worker is back"
    closed = client.post("/api/circuits/render-worker/close", headers=bearer(ADMIN)).json()
    assert closed == {"circuit": "render-worker", "changed": True, "state": "closed"}
    assert tasks.circuit_states()[0].state is CircuitState.CLOSED
    assert tasks.circuit_log("render-worker")[0].reason == "closed over HTTP"
    tasks.run_worker(burst=True)
    assert tasks.get_job(held.id).state is JobState.SUCCEEDED


def test_health_and_the_schema(client: TestClient) -> None:
    health = client.get("/health").json()
    assert health["ok"] is True and health["migrations_current"] is True
    assert health["live_workers"] == 0
    schema = client.get("/api/openapi.json").json()
    assert {"/api/jobs", "/api/circuits/{name}/close", "/health"} <= set(schema["paths"])


def test_tokens_are_checked_when_read() -> None:
    for text, message in [
        ("admin", "role:token"),
        ("owner:" + "x" * 20, "role:token"),
        ("admin:short", "at least 24 characters"),
        ("admin:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "at least 10 different"),
        ("read:changeme-changeme-changeme", "read token is too weak"),
        (" , ", "names no token"),
    ]:
        with pytest.raises(conveyor.ConfigurationError, match=message):
            Tokens.parse(text)
    tokens = Tokens.parse(TOKENS)
    assert (tokens.role_of(ADMIN), tokens.role_of(READER), tokens.role_of("x")) == (
        "admin",
        "read",
        None,
    )


def test_a_file_of_hashed_tokens(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "tokens"
    path.write_text(
        f"# ops\nadmin:sha256:{hashlib.sha256(ADMIN.encode()).hexdigest()}\n"
        f"read:sha256:{hashlib.sha256(READER.encode()).hexdigest()}\n"
    )
    tokens = Tokens.from_file(path)
    assert (tokens.role_of(ADMIN), tokens.role_of(READER)) == ("admin", "read")
    path.write_text(f"admin:{ADMIN}\n")
    with pytest.raises(conveyor.ConfigurationError, match="sha256"):
        Tokens.from_file(path)
    with pytest.raises(conveyor.ConfigurationError, match=r"cannot read .*missing"):
        Tokens.from_file(tmp_path / "missing")


def test_weak_tokens_are_refused_with_a_way_to_make_one() -> None:
    with pytest.raises(conveyor.ConfigurationError) as refused:
        Tokens.parse("admin:changeme-changeme")
    assert "secrets.token_urlsafe(32)" in str(refused.value)


# -- conveyor serve, a real server ----------------------------------------------------------

SERVED = """
import conveyor

app = conveyor.App(DATABASE_URL)
app.circuit("render-worker", failure_threshold=1)


@app.task(name="add")
def add(a, b):
    return a + b
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(root: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    environ.update(env, PYTHONPATH=str(root))
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor", "serve", "served:app", *args],
        cwd=root,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_conveyor_serve_answers_over_http(tmp_path: Path) -> None:
    (tmp_path / "served.py").write_text(
        f"DATABASE_URL = 'sqlite:///{tmp_path / 'jobs.db'}'\n" + SERVED
    )
    port = free_port()
    proc = serve(tmp_path, "--port", str(port), env={"CONVEYOR_API_TOKENS": TOKENS})
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"{base}/health", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "conveyor serve did not answer"
                time.sleep(0.1)
        assert health.json()["ok"] is True
        made = httpx.post(
            f"{base}/api/jobs", json={"task": "add", "args": [1, 2]}, headers=bearer(ADMIN)
        )
        assert made.status_code == 201
        assert (
            httpx.get(f"{base}/api/jobs", headers=bearer(READER)).json()["jobs"][0]["id"]
            == (made.json()["id"])
        )
        closed = httpx.post(f"{base}/api/circuits/render-worker/close", headers=bearer(ADMIN))
        assert closed.json()["changed"] is False  # it was not open
    finally:
        proc.terminate()
        proc.wait(10)


def test_conveyor_serve_refuses_a_public_bind_without_tokens(tmp_path: Path) -> None:
    (tmp_path / "served.py").write_text(
        f"DATABASE_URL = 'sqlite:///{tmp_path / 'jobs.db'}'\n" + SERVED
    )
    proc = serve(tmp_path, "--host", "0.0.0.0", env={})
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert b"refusing to serve on 0.0.0.0 without API tokens" in out


def test_search_sees_ids_task_names_and_arguments_as_shown(
    client: TestClient, tasks: conveyor.App
) -> None:
    login = tasks.tasks["login"].enqueue("ann", password="hunter2", options={"note": "Urgent"})
    added = tasks.tasks["add"].enqueue(40, 2)

    def found(**params: Any) -> list[int]:
        answer = client.get("/api/jobs", params=params, headers=bearer(READER))
        assert answer.status_code == 200, answer.text
        return [j["id"] for j in answer.json()["jobs"]]

    assert found(search="ANN") == [login.id]
    assert found(search="urgent") == [login.id]
    assert found(search=str(added.id)) == [added.id]
    assert found(search="add") == [added.id]
    assert found(search="hunter2") == []  # a redacted value cannot be found by guessing it
    assert found(search="ann", task="add") == []
    assert found(search=str(added.id), state="dead") == []


def test_listings_page_with_a_cursor(client: TestClient, tasks: conveyor.App) -> None:
    ids = [j.id for j in tasks.tasks["add"].enqueue_many([(i, i) for i in range(5)])]
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"before_id": cursor} if cursor else {})}
        page = client.get("/api/jobs", params=params, headers=bearer(READER)).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)
    too_big = client.get("/api/jobs", params={"limit": 501}, headers=bearer(READER))
    assert too_big.status_code == 422


def test_bulk_actions_say_how_many_they_changed(client: TestClient, tasks: conveyor.App) -> None:
    admin = bearer(ADMIN)
    dead = [tasks.tasks["fail"].enqueue("value").id for _ in range(2)]
    tasks.run_worker(burst=True)
    queued = tasks.tasks["add"].enqueue(1, 1).id

    def act(action: str, ids: list[int]) -> dict[str, Any]:
        answer = client.post("/api/jobs/bulk", json={"action": action, "ids": ids}, headers=admin)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    assert act("retry", [*dead, queued, 999]) == {"action": "retry", "requested": 4, "affected": 2}
    assert {tasks.get_job(i).state for i in dead} == {JobState.QUEUED}
    assert act("cancel", [*dead, queued])["affected"] == 3
    assert act("purge", [*dead, queued, queued])["affected"] == 3
    assert tasks.list_jobs() == []
    for body in (
        {"action": "retry", "ids": []},
        {"action": "explode", "ids": [1]},
        {"action": "retry", "ids": list(range(1, 1002))},
    ):
        refused = client.post("/api/jobs/bulk", json=body, headers=admin)
        assert refused.status_code == 422, body


def test_the_dead_letter_queue_by_task_and_error(client: TestClient, tasks: conveyor.App) -> None:
    admin = bearer(ADMIN)
    for kind in ["value", "value", "value", "key"]:
        tasks.tasks["fail"].enqueue(kind)
    tasks.run_worker(burst=True)
    groups = client.get("/api/dlq/groups", headers=bearer(READER)).json()["groups"]
    assert [(g["task"], g["error_type"], g["count"]) for g in groups] == [
        ("fail", "ValueError", 3),
        ("fail", "KeyError", 1),
    ]
    listed = client.get("/api/dlq", params={"error_type": "KeyError"}, headers=admin).json()
    assert [j["args"] for j in listed["jobs"]] == [["key"]]
    retried = client.post(
        "/api/dlq/retry", json={"task": "fail", "error_type": "ValueError"}, headers=admin
    ).json()
    assert retried == {"action": "retry", "affected": 3, "more": False}
    assert tasks.queue_stats()["default"] == {JobState.QUEUED: 3, JobState.DEAD: 1}
    purged = client.post("/api/dlq/purge", json={}, headers=admin).json()
    assert purged["affected"] == 1
    assert client.get("/api/dlq/groups", headers=admin).json() == {"groups": []}


def test_the_overview_counts_queues_and_throughput(client: TestClient, tasks: conveyor.App) -> None:
    tasks.tasks["add"].enqueue_many([(i, i) for i in range(3)])
    tasks.tasks["fail"].enqueue("key")
    tasks.run_worker(burst=True)
    tasks.tasks["add"].configure(queue="later").enqueue(1, 1)
    shown = client.get("/api/overview", headers=bearer(READER)).json()
    assert shown["jobs"]["succeeded"] == 3 and shown["jobs"]["dead"] == 1
    assert len(shown["last_hour"]) == 60 and len(shown["last_day"]) == 24
    assert sum(b["succeeded"] for b in shown["last_hour"]) == 3
    assert sum(b["dead"] for b in shown["last_day"]) == 1
    assert shown["queues"]["default"]["finished_5m"] == {
        "succeeded": 3,
        "dead": 1,
        "cancelled": 0,
    }
    assert shown["queues"]["later"]["oldest_queued_s"] >= 0
    assert shown["queues"]["default"]["oldest_queued_s"] is None


def test_big_bodies_are_refused_and_every_answer_carries_the_security_headers(
    client: TestClient, tasks: conveyor.App
) -> None:
    huge = {"task": "add", "args": ["x" * (2 << 20), 1]}
    answer = client.post("/api/jobs", json=huge, headers=bearer(ADMIN))
    assert answer.status_code == 413
    assert answer.json()["error"] == "the request body is too large"
    assert tasks.queue_stats() == {}
    for response in (answer, client.get("/health"), client.get("/api/jobs")):
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"


def test_the_redaction_hook_decides_what_is_shown(make_app: Callable[..., conveyor.App]) -> None:
    def hide_cards(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: "<card>" if k == "card" else v for k, v in value.items()}
        return value

    app = make_app(redact=hide_cards)

    @app.task(name="charge")
    def charge(card: str, password: str) -> None: ...

    job = charge.enqueue(card="4242", password="pw")
    with TestClient(
        create_api(app, None), base_url="http://localhost:8000", client=LOOPBACK
    ) as client:
        shown = client.get(f"/api/jobs/{job.id}").json()
    assert shown["kwargs"] == {"card": "<card>", "password": "pw"}
    assert app.get_job(job.id).kwargs == {"card": "4242", "password": "pw"}


def test_a_server_without_tokens_answers_only_to_this_machine(app: conveyor.App) -> None:
    api = create_api(app, None)
    with TestClient(api, base_url="http://rebound.example.com:8000", client=LOOPBACK) as stranger:
        refused = stranger.get("/api/jobs")
        assert refused.status_code == 421  # a DNS-rebinding page is not this machine
        assert refused.json()["error"] == "this server answers only to 127.0.0.1 and localhost"
    for base in ("http://127.0.0.1:8000", "http://localhost", "http://[::1]:8000"):
        with TestClient(api, base_url=base, client=LOOPBACK) as local:
            assert local.get("/api/jobs").status_code == 200, base


def test_cross_site_posts_are_refused(client: TestClient, tasks: conveyor.App) -> None:
    job = tasks.tasks["add"].enqueue(1, 1)
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        answer = client.post(f"/api/jobs/{job.id}/cancel", headers={**bearer(ADMIN), **headers})
        assert (answer.status_code, answer.json()["error"]) == (
            403,
            "cross-site requests are refused",
        )
    assert tasks.get_job(job.id).state is JobState.QUEUED
    same = client.post(
        f"/api/jobs/{job.id}/cancel", headers={**bearer(ADMIN), "Origin": "http://testserver"}
    )
    assert same.json()["state"] == "cancelled"


def test_more_bad_input_is_refused_at_the_edge(client: TestClient, tasks: conveyor.App) -> None:
    admin = bearer(ADMIN)
    deep: Any = "bottom"
    for _ in range(300):
        deep = [deep]
    nested = client.post("/api/jobs", json={"task": "add", "args": [deep, 1]}, headers=admin)
    assert nested.status_code == 422 and "levels deep" in nested.json()["error"]

    def chunks() -> Iterator[bytes]:
        yield b'{"task": "add", "args": ["'
        for _ in range(40):
            yield b"x" * 65536
        yield b'", 1]}'

    chunked = client.post("/api/jobs", content=chunks(), headers=admin)
    assert (chunked.status_code, chunked.json()["error"]) == (413, "the request body is too large")
    assert tasks.queue_stats() == {}
    for weird in ("²", "9" * 30):
        assert client.get("/api/jobs", params={"search": weird}, headers=admin).json() == {
            "jobs": [],
            "next": None,
        }
    planted = {"Cookie": "conveyor_session=admin.1.x.é".encode("latin-1")}
    spoiled = client.get("/jobs", headers=planted, follow_redirects=False)
    assert spoiled.status_code == 303 and spoiled.headers["location"].startswith("/signin")


def test_search_reads_text_as_written(client: TestClient, tasks: conveyor.App) -> None:
    job = tasks.tasks["add"].enqueue("Zürich", 'say "hi"')
    for text in ("zürich", 'say "hi"'):
        found = client.get("/api/jobs", params={"search": text}, headers=bearer(READER)).json()
        assert [j["id"] for j in found["jobs"]] == [job.id], text


def test_periodic_arguments_are_redacted_too(make_app: Callable[..., conveyor.App]) -> None:
    app = make_app()

    @app.periodic("*/5 * * * *", kwargs={"api_key": "SUPERSECRET", "region": "eu"})
    def sync(api_key: str, region: str) -> None: ...

    with TestClient(create_api(app, None), base_url="http://127.0.0.1", client=LOOPBACK) as client:
        [entry] = client.get("/api/cron").json()
    assert entry["kwargs"] == {"api_key": "***", "region": "eu"}


def test_a_store_without_its_schema_answers_503_in_json(tmp_path: Path) -> None:
    app = conveyor.App(f"sqlite:///{tmp_path / 'new.db'}", auto_migrate=False)
    try:
        with TestClient(
            create_api(app, None), base_url="http://127.0.0.1", client=LOOPBACK
        ) as client:
            for path in ("/api/jobs", "/health"):
                answer = client.get(path)
                assert answer.status_code == 503, path
                assert answer.headers["content-type"] == "application/json"
    finally:
        app.close()


def test_a_dashboard_session_ends_with_its_token(
    tasks: conveyor.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_SECRET_KEY", "k" * 40)  # servers that share sessions
    with TestClient(create_api(tasks, Tokens.parse(TOKENS))) as first:
        signed = first.post(
            "/signin", data={"token": READER, "next": "/jobs"}, follow_redirects=False
        )
        assert (signed.status_code, signed.headers["location"]) == (303, "/jobs")
        cookie = signed.cookies["conveyor_session"]
    for tokens, status in [(TOKENS, 200), (f"admin:{ADMIN}", 303)]:
        with TestClient(create_api(tasks, Tokens.parse(tokens))) as server:
            server.cookies.set("conveyor_session", cookie)
            page = server.get("/jobs", follow_redirects=False)
            assert page.status_code == status, tokens
    monkeypatch.setenv("CONVEYOR_SECRET_KEY", "short")
    with pytest.raises(conveyor.ConfigurationError, match="at least 32 characters"):
        create_api(tasks, Tokens.parse(TOKENS))
