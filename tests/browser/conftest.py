"""Browser tests: Debian's Chromium driven by Playwright's sync API, against the API served by a
real uvicorn server on a free loopback port.

    def test_something(app: conveyor.App, serve: Serve, page: Page) -> None:
        base_url = serve(create_api(app, None))
        page.goto(f"{base_url}/health")

`browser` is one Chromium for the whole session, `page` a fresh context and page per test. No
browser is ever downloaded: without /usr/bin/chromium (Debian's `chromium` package, which `make
test` installs where it can) the tests fail, naming the command that installs it, unless
CONVEYOR_SKIP_BROWSER=1 leaves them out (never in CI).

Playwright's sync API keeps its event loop marked as the running one in this thread between its
calls, and nothing else may start a loop while one is marked (pytest-asyncio's fixtures such as
`app`, `App.run_worker`). So the loop is marked only while Playwright code runs: in these
fixtures and in the body of a test that uses the browser. Code in such a body that runs an event
loop of its own goes inside `with outside_playwright():`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from playwright.sync_api import Browser, Page, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from conftest import IN_CI  # tests/conftest.py

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Default for every Playwright wait and action on a `page`, in milliseconds.
PAGE_TIMEOUT_MS = 10_000
#: How long a served API may take to accept connections.
SERVE_DEADLINE_S = 15.0

#: A server factory: `serve(create_api(app, tokens))` returns the served base URL.
Serve = Callable[[FastAPI], str]

_loop_of_this_session: list[asyncio.AbstractEventLoop] = []


@contextmanager
def _in_playwright() -> Iterator[None]:
    """Playwright's event loop marked as running for the duration, and unmarked afterwards."""
    if _loop_of_this_session and not _loop_of_this_session[0].is_closed():
        asyncio._set_running_loop(_loop_of_this_session[0])
    try:
        yield
    finally:
        asyncio._set_running_loop(None)


@contextmanager
def outside_playwright() -> Iterator[None]:
    """In a browser test's body: run code that starts an event loop (`app.run_worker(...)`)."""
    marked = asyncio._get_running_loop()
    asyncio._set_running_loop(None)
    try:
        yield
    finally:
        asyncio._set_running_loop(marked)


def _uses_browser(item: pytest.Item) -> bool:
    return "browser" in getattr(item, "fixturenames", ())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    if not _uses_browser(item):
        yield
        return
    with _in_playwright():
        yield


def no_browser(why: str) -> None:
    """No browser to test in: a failure, unless the user left the browser tests out."""
    if os.environ.get("CONVEYOR_SKIP_BROWSER") == "1" and not IN_CI:
        pytest.skip(f"CONVEYOR_SKIP_BROWSER=1 leaves the browser tests out ({why})")
    pytest.fail(f"{why} (or set CONVEYOR_SKIP_BROWSER=1 to leave the browser tests out)")


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, shared by every test of the session."""
    if not CHROMIUM.exists():
        no_browser(f"{CHROMIUM} is missing: install it with `sudo apt-get install chromium`")
    playwright = sync_playwright().start()
    _loop_of_this_session[:] = [asyncio.get_running_loop()]
    try:
        with _in_playwright():
            try:
                launched = playwright.chromium.launch(
                    executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
                )
            except PlaywrightError as exc:
                playwright.stop()
                no_browser(f"Chromium at {CHROMIUM} did not start: {exc}")
                raise
        yield launched
        with _in_playwright():
            launched.close()
            playwright.stop()
    finally:
        _loop_of_this_session.clear()
        asyncio._set_running_loop(None)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page in a browser context of its own (no cookies or storage shared between tests)."""
    with _in_playwright():
        context = browser.new_context()
        opened = context.new_page()
        opened.set_default_timeout(PAGE_TIMEOUT_MS)
        opened.set_default_navigation_timeout(PAGE_TIMEOUT_MS)
    yield opened
    with _in_playwright():
        context.close()


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Serves FastAPI applications with uvicorn on 127.0.0.1, each in a thread of its own.

    `serve(api)` returns once the server accepts connections, with its base URL
    (`http://127.0.0.1:PORT`). Every server is stopped when the test ends.
    """
    running: list[tuple[int, socket.socket, uvicorn.Server, threading.Thread]] = []

    def start(api: FastAPI) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
        config = uvicorn.Config(api, log_level="warning", access_log=False)
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True
        )
        thread.start()
        running.append((port, sock, server, thread))
        deadline = time.monotonic() + SERVE_DEADLINE_S
        while not server.started:
            if not thread.is_alive():
                pytest.fail(f"uvicorn stopped before it served on port {port}")
            if time.monotonic() > deadline:
                pytest.fail(f"uvicorn did not serve on port {port} within {SERVE_DEADLINE_S} s")
            time.sleep(0.01)
        with socket.create_connection(("127.0.0.1", port), timeout=SERVE_DEADLINE_S):
            return f"http://127.0.0.1:{port}"

    yield start
    for _, _, server, _ in running:
        server.should_exit = True
    for port, sock, _, thread in running:
        thread.join(SERVE_DEADLINE_S)
        sock.close()
        assert not thread.is_alive(), f"uvicorn on port {port} did not stop"
