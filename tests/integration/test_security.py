"""`conveyor serve` against a hostile network and careless operators: slow and silent
connections, a flood of connections, malformed requests, guessed tokens, sessions after
sign-out, proxies, cross-origin pages, forged Host headers, planted cookies, booleans posing as
numbers. Behaviour that lives in the HTTP server is tested over a real `conveyor serve`."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

import conveyor
from conveyor.web import Tokens, create_api

ADMIN = "admin-token-0123456789abcdef"
READER = "read-token-0123456789abcdef"
TOKENS = f"admin:{ADMIN},read:{READER}"
LOOPBACK = ("127.0.0.1", 50000)
KEY = "k" * 40

SERVED = """
import conveyor

app = conveyor.App(DATABASE_URL)


@app.task(name="add")
def add(a, b):
    return a + b
"""


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, "the page has no form"
    return found.group(1)


# -- a real server ------------------------------------------------------------------------


class Served:
    def __init__(self, root: Path, *args: str, env: dict[str, str] | None = None) -> None:
        import os

        (root / "served.py").write_text(f"DATABASE_URL = 'sqlite:///{root / 'jobs.db'}'\n" + SERVED)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        environ.update(env or {}, PYTHONPATH=str(root))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "conveyor",
                "serve",
                "served:app",
                "--port",
                str(self.port),
                *args,
            ],
            cwd=root,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{self.base}/health", timeout=2)
                return
            except httpx.TransportError:
                assert self.proc.poll() is None, self.output()
                assert time.monotonic() < deadline, "conveyor serve did not answer"
                time.sleep(0.1)

    def output(self) -> str:
        self.stop()
        return self.proc.stdout.read().decode() if self.proc.stdout else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = Served(
        tmp_path,
        "--request-timeout",
        "1",
        "--limit-concurrency",
        "8",
        env={"CONVEYOR_API_TOKENS": TOKENS},
    )
    yield server
    server.stop()


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed `sock` within `seconds`, and what it sent before."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        return False, received
    except ConnectionResetError:
        pass
    return True, received


def test_silent_and_dribbling_connections_are_closed(served: Served) -> None:
    silent = served.connect()
    dribbling = served.connect()
    began = time.monotonic()
    for byte in b"GET /health HTTP/1.1\r\nHost: x\r\n":  # never the blank line ending the head
        try:
            dribbling.send(bytes([byte]))
        except OSError:
            break
        time.sleep(0.1)
        if time.monotonic() - began > 6:
            break
    closed, sent = closed_within(silent, 5)
    assert closed and sent.startswith(b"HTTP/1.1 408"), sent
    assert b'"error": "the request was not sent in time"' in sent
    assert closed_within(dribbling, 5)[0], "a head sent a byte at a time kept the connection"
    # a client that sends its request in time is served as ever, also on a kept-alive connection
    with httpx.Client(base_url=served.base) as client:
        for _ in range(3):
            assert client.get("/health").status_code == 200
            time.sleep(1.5)  # idle between requests is not a slow request


def test_connections_beyond_the_limit_are_closed_at_once(served: Served) -> None:
    held = [served.connect() for _ in range(8)]
    try:
        time.sleep(0.2)
        extra = served.connect()
        assert closed_within(extra, 3)[0], "a connection beyond the limit was kept"
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    assert httpx.get(f"{served.base}/health").status_code == 200


def test_requests_the_server_cannot_parse_get_the_json_shape(served: Served) -> None:
    for raw in (
        b"NONSENSE\r\n\r\n",
        # a head that goes on past its limit
        b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 40_000,
    ):
        with served.connect() as sock:
            sock.sendall(raw)
            _, answer = closed_within(sock, 5)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), answer[:200]
        assert b"content-security-policy:" in head.lower()
        assert b"server:" not in head.lower()
        assert body == b'{"error": "invalid HTTP request", "detail": null}'
    response = httpx.get(f"{served.base}/health")
    assert "server" not in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"


def test_a_missing_tokens_file_is_one_line(tmp_path: Path) -> None:
    import os

    (tmp_path / "served.py").write_text(f"DATABASE_URL = 'sqlite:///{tmp_path / 'j.db'}'\n{SERVED}")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    environ.update(CONVEYOR_API_TOKENS_FILE=str(tmp_path / "nope"), PYTHONPATH=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "serve", "served:app"],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"cannot read {tmp_path / 'nope'}" in done.stderr.strip().splitlines()[-1]


def test_behind_a_trusted_tls_proxy_sign_in_works_and_cookies_are_secure(tmp_path: Path) -> None:
    server = Served(
        tmp_path, "--forwarded-allow-ips", "127.0.0.1", env={"CONVEYOR_API_TOKENS": TOKENS}
    )
    proxied = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-For": "203.0.113.7",
        "Host": "jobs.example.com",
        "Origin": "https://jobs.example.com",
    }
    try:
        signed = httpx.post(
            f"{server.base}/signin", data={"token": ADMIN, "next": "/jobs"}, headers=proxied
        )
        assert signed.status_code == 303, signed.text
        cookie = signed.headers["set-cookie"]
        assert cookie.startswith("__Host-conveyor_session=") and "Secure" in cookie
        # a proxy not trusted: its https is not believed, nor is the cross-site check fooled
        (tmp_path / "untrusted").mkdir()
        plain = Served(tmp_path / "untrusted", env={"CONVEYOR_API_TOKENS": TOKENS})
        try:
            refused = httpx.post(f"{plain.base}/signin", data={"token": ADMIN}, headers=proxied)
            assert refused.status_code == 403
        finally:
            plain.stop()
    finally:
        server.stop()


# -- the application ------------------------------------------------------------------------


@pytest.fixture
def tasks(app: conveyor.App) -> conveyor.App:
    @app.task(name="add")
    def add(a: Any, b: Any) -> Any:
        return a + b

    return app


@pytest.fixture
def secured(tasks: conveyor.App, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("CONVEYOR_SECRET_KEY", KEY)
    with TestClient(create_api(tasks, Tokens.parse(TOKENS)), client=("198.51.100.1", 1)) as found:
        yield found


def test_guessing_tokens_is_throttled_per_address(tasks: conveyor.App) -> None:
    api = create_api(tasks, Tokens.parse(TOKENS))
    with TestClient(api, client=("198.51.100.1", 1)) as guesser:
        answers = [guesser.get("/api/jobs", headers=bearer(f"guess-{n:030d}")) for n in range(12)]
        assert [a.status_code for a in answers[:10]] == [401] * 10
        assert answers[10].status_code == 429 and int(answers[10].headers["retry-after"]) > 0
        # once throttled, even the right token is not checked: a guess cannot be told right
        assert guesser.get("/api/jobs", headers=bearer(ADMIN)).status_code == 429
        page = guesser.post("/signin", data={"token": ADMIN})
        assert page.status_code == 429 and "Retry-After" in page.headers
    with TestClient(api, client=("198.51.100.2", 1)) as other:
        assert other.get("/api/jobs", headers=bearer(READER)).status_code == 200
        for n in range(12):  # sign-in failures count as well
            other.post("/signin", data={"token": f"guess-{n:030d}"})
        assert other.get("/api/jobs", headers=bearer(READER)).status_code == 429


def test_sign_out_ends_the_session_on_every_server(
    secured: TestClient, tasks: conveyor.App
) -> None:
    signed = secured.post("/signin", data={"token": ADMIN, "next": "/jobs"}, follow_redirects=False)
    cookie = signed.cookies["conveyor_session"]
    page = secured.get("/jobs")
    assert page.status_code == 200
    other_origin = secured.post(
        "/signout", data={"csrf": csrf_of(page.text)}, headers={"Origin": "https://evil.example"}
    )
    assert other_origin.status_code == 403
    assert (
        secured.post(
            "/signout", data={"csrf": csrf_of(page.text)}, follow_redirects=False
        ).status_code
        == 303
    )
    with TestClient(create_api(tasks, Tokens.parse(TOKENS))) as another_server:
        for client in (secured, another_server):
            client.cookies.set("conveyor_session", cookie)  # the old cookie, kept by an attacker
            again = client.get("/jobs", follow_redirects=False)
            assert (again.status_code, again.headers["location"]) == (303, "/signin?next=%2Fjobs")


def test_a_public_https_url_makes_cookies_secure_and_names_the_origin(
    tasks: conveyor.App,
) -> None:
    api = create_api(tasks, Tokens.parse(TOKENS), public_url="https://jobs.example.com")
    with TestClient(api, base_url="http://10.0.0.5:8000") as client:
        here = {"Origin": "https://jobs.example.com"}
        signed = client.post("/signin", data={"token": ADMIN}, headers=here, follow_redirects=False)
        assert signed.status_code == 303
        assert "Secure" in signed.headers["set-cookie"]
        assert signed.headers["set-cookie"].startswith("__Host-conveyor_session=")
        forged = client.post(
            "/signin", data={"token": ADMIN}, headers={"Origin": "http://10.0.0.5:8000"}
        )
        assert forged.status_code == 403


def test_a_server_without_tokens_refuses_proxies_strangers_and_other_pages(
    tasks: conveyor.App,
) -> None:
    api = create_api(tasks, None)
    with TestClient(api, base_url="http://127.0.0.1:8000", client=LOOPBACK) as local:
        assert local.get("/api/jobs").status_code == 200
        for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP", "Via"):
            proxied = local.get("/api/jobs", headers={header: "203.0.113.7"})
            assert proxied.status_code == 403, header
        # a page of another site (or another port of this one) may not read or listen
        for headers in (
            {"Origin": "http://localhost:3000"},
            {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"},
            {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"},
        ):
            for path in ("/api/jobs", "/api/events", "/ui/events"):
                assert local.get(path, headers=headers).status_code == 403, (path, headers)
        # following a link from elsewhere to the dashboard still works
        link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
        assert local.get("/jobs", headers=link).status_code == 200
    with TestClient(api, base_url="http://127.0.0.1:8000", client=("192.0.2.9", 1)) as stranger:
        assert stranger.get("/api/jobs").status_code == 403


def test_redirects_never_reflect_the_host_header(secured: TestClient) -> None:
    for path in ("/static", "/api/jobs/"):
        answer = secured.get(
            path, headers={"Host": "evil.example", **bearer(READER)}, follow_redirects=False
        )
        assert answer.is_redirect, path
        assert answer.headers["location"].startswith("/"), answer.headers["location"]
        assert "evil.example" not in answer.headers["location"]


def test_a_planted_flash_cookie_is_not_shown(secured: TestClient) -> None:
    secured.post("/signin", data={"token": ADMIN})
    secured.cookies.set("conveyor_flash", "Your%20token%20expired%3A%20call%20555-0100")
    assert "555-0100" not in secured.get("/jobs").text


def test_booleans_are_not_numbers_over_http(secured: TestClient, tasks: conveyor.App) -> None:
    for options in ({"priority": True}, {"delay": True}, {"delay": False}):
        answer = secured.post(
            "/api/jobs", json={"task": "add", "args": [1, 2], **options}, headers=bearer(ADMIN)
        )
        assert answer.status_code == 422, options
    assert tasks.queue_stats() == {}
    fine = secured.post(
        "/api/jobs", json={"task": "add", "args": [1, 2], "delay": 1}, headers=bearer(ADMIN)
    )
    assert fine.status_code == 201


def test_an_unexpected_error_answers_in_json_with_the_security_headers(
    tasks: conveyor.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(tasks, "list_workers", broken)
    api = create_api(tasks, None)
    with TestClient(
        api, base_url="http://127.0.0.1", client=LOOPBACK, raise_server_exceptions=False
    ) as client:
        answer = client.get("/api/workers")
        assert answer.status_code == 500
        assert answer.json() == {"error": "internal server error", "detail": None}
        assert answer.headers["x-frame-options"] == "DENY"
        page = client.get("/workers")
        assert page.status_code == 500 and "text/html" in page.headers["content-type"]
        assert "a bug" not in page.text and "content-security-policy" in page.headers


def test_an_event_stream_outlives_the_request_timeout(served: Served) -> None:
    with (
        httpx.Client(base_url=served.base, timeout=10) as client,
        client.stream("GET", "/api/events", headers=bearer(READER)) as stream,
    ):
        lines = stream.iter_lines()
        assert next(lines).startswith("retry:")
        time.sleep(2.5)  # more than twice the request timeout, with nothing sent
        made = client.post("/api/jobs", json={"task": "add", "args": [1, 2]}, headers=bearer(ADMIN))
        assert made.status_code == 201
        for line in lines:
            if line.startswith("data:"):
                assert f'"job_id": {made.json()["id"]}' in line
                break


def test_guessing_from_many_addresses_is_throttled_overall() -> None:
    from conveyor.web.auth import Throttle

    throttle = Throttle(per_client=10, overall=5)
    for n in range(5):  # one guess each from five addresses: none reaches its own limit
        assert throttle.retry_after(f"203.0.113.{n}") is None
        throttle.failed(f"203.0.113.{n}")
    assert throttle.retry_after("203.0.113.0") is not None  # every address that failed waits
    assert throttle.retry_after("198.51.100.9") is None  # one that never guessed wrong does not
