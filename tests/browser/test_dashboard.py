"""The dashboard in a real headless Chromium: signing in, a job moving live, retrying from the
dead-letter queue, pausing a queue, a cross-origin POST refused, hostile text shown as text.

With CONVEYOR_SCREENSHOTS=<folder> the main pages are saved there as PNG (`make screenshots`
writes docs/img).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from playwright.sync_api import Page, expect

import conveyor
from conveyor import JobState
from conveyor.web import Tokens, create_api

from .conftest import Serve, outside_playwright

ADMIN = "admin-token-0123456789abcdef"
READER = "read-token-0123456789abcdef"
TOKENS = Tokens.parse(f"admin:{ADMIN},read:{READER}")
XSS_ARG = "<img src=x onerror=window.__xss=1>"
XSS_ERROR = "<script>window.__xss = 2</script>"
#: read at import: the suite's fixtures clear CONVEYOR_* variables for each test
SCREENSHOTS = os.environ.get("CONVEYOR_SCREENSHOTS")


@pytest.fixture
def tasks(app: conveyor.App) -> conveyor.App:
    @app.task(name="add")
    def add(a: Any, b: Any) -> Any:
        return a + b

    @app.task(name="fail", max_attempts=1)
    def fail(message: str) -> None:
        raise ValueError(message)

    return app


@pytest.fixture
def run_jobs(make_app: Callable[..., conveyor.App], tasks: conveyor.App) -> Callable[[], None]:
    """Run every job once with a burst worker of a second App (the server's App stays on the
    server's own event loop)."""
    worker = make_app()
    worker.tasks.update(tasks.tasks)

    def run() -> None:
        with outside_playwright():
            worker.run_worker(burst=True)

    return run


@pytest.fixture
def shots(tmp_path: Path) -> Iterator[Callable[[Page, str], None]]:
    """Screenshots of pages, kept when CONVEYOR_SCREENSHOTS names a folder."""
    taken: list[Path] = []

    def shoot(page: Page, name: str) -> None:
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.read_bytes().startswith(b"\x89PNG")
        taken.append(path)

    yield shoot
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        for path in taken:
            shutil.copy(path, Path(SCREENSHOTS) / path.name)


def sign_in(page: Page, base: str, token: str) -> None:
    page.goto(f"{base}/")
    expect(page).to_have_url(f"{base}/signin?next=%2F")
    page.fill("#token", token)
    page.click("button:has-text('Sign in')")
    expect(page.locator("h1")).to_have_text("Overview")


def test_sign_in_and_watch_a_job_finish_live(
    tasks: conveyor.App,
    serve: Serve,
    page: Page,
    run_jobs: Callable[[], None],
    shots: Callable[[Page, str], None],
) -> None:
    api = create_api(tasks, TOKENS)
    base = serve(api)
    page.goto(f"{base}/jobs")
    expect(page).to_have_url(f"{base}/signin?next=%2Fjobs")
    page.fill("#token", "not-a-token-at-all-0000")
    page.click("button:has-text('Sign in')")
    expect(page.locator("[role=alert]")).to_have_text("That token is not known.")
    sign_in(page, base, ADMIN)
    cookie = next(c for c in page.context.cookies() if c["name"] == "conveyor_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    job = tasks.tasks["add"].enqueue(2, 3)
    tasks.tasks["add"].enqueue_many([(i, i) for i in range(8)])
    page.goto(f"{base}/jobs/{job.id}")
    expect(page.locator("h1 .state")).to_have_text("queued")
    expect(page.locator("#live")).to_have_text("live")
    page.evaluate("window.__same_page = true")

    run_jobs()

    expect(page.locator("h1 .state")).to_have_text("succeeded")
    expect(page.locator("pre.json").last).to_have_text("5")
    assert page.evaluate("window.__same_page") is True  # updated in place, not reloaded
    timeline = page.locator("ol.timeline li")
    expect(timeline).to_have_count(3)
    shots(page, "job")

    api.state.stats.forget()  # counts are a snapshot up to two seconds old: take it now
    page.goto(f"{base}/")
    expect(page.locator(".card", has_text="live workers")).to_be_visible()
    expect(page.locator("figure.chart figcaption").first).to_contain_text("9 succeeded")
    succeeded = page.locator("table.queues a[href='/jobs?queue=default&state=succeeded']")
    expect(succeeded).to_have_text("9")
    shots(page, "overview")
    page.goto(f"{base}/jobs")
    expect(page.locator("table.jobs tbody tr")).to_have_count(9)
    shots(page, "jobs")


def test_retry_a_dead_job_from_the_dead_letter_page(
    tasks: conveyor.App,
    serve: Serve,
    page: Page,
    run_jobs: Callable[[], None],
    shots: Callable[[Page, str], None],
) -> None:
    dead = tasks.tasks["fail"].enqueue("card declined")
    tasks.tasks["fail"].enqueue("card declined again")
    run_jobs()
    base = serve(create_api(tasks, TOKENS))
    sign_in(page, base, ADMIN)
    page.goto(f"{base}/dlq")
    group = page.locator("table.groups tbody tr")
    expect(group).to_have_count(1)
    expect(group).to_contain_text("fail")
    expect(group).to_contain_text("ValueError")
    expect(group.locator("td.num")).to_have_text("2")
    shots(page, "dlq")

    row = page.locator("table.jobs tbody tr", has_text=str(dead.id)).filter(
        has=page.locator(f"a[href='/jobs/{dead.id}']")
    )
    row.locator("button:has-text('Retry')").click()
    expect(page.locator(".flash")).to_have_text(f"Job {dead.id} is queued again.")
    assert tasks.get_job(dead.id).state is JobState.QUEUED
    expect(page.locator("table.groups td.num")).to_have_text("1")

    # bulk: tick jobs on the jobs page, then one button for all of them
    page.goto(f"{base}/jobs?state=dead")
    page.locator("input.select-all").check()
    expect(page.locator("input[name=ids]:checked")).to_have_count(1)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("form.bulk button:has-text('Retry')")
    expect(page.locator(".flash")).to_have_text("1 of 1 jobs retried.")
    assert tasks.queue_stats()["default"] == {JobState.QUEUED: 2}


def test_pause_a_queue_and_a_reader_cannot(
    tasks: conveyor.App, serve: Serve, page: Page, shots: Callable[[Page, str], None]
) -> None:
    tasks.tasks["add"].enqueue(1, 1)
    base = serve(create_api(tasks, TOKENS))
    sign_in(page, base, ADMIN)
    page.goto(f"{base}/queues")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("tr", has_text="default").locator("button:has-text('Pause')").click()
    expect(page.locator(".flash")).to_have_text("Queue default paused.")
    expect(page.locator("tr", has_text="default").locator(".badge")).to_have_text("paused")
    assert tasks.paused_queues() == ["default"]
    shots(page, "queues")

    page.context.clear_cookies()
    sign_in(page, base, READER)
    page.goto(f"{base}/queues")
    expect(page.locator("button:has-text('Resume')")).to_have_count(0)
    expect(page.locator("form.bulk")).to_have_count(0)


def test_a_cross_origin_post_is_refused(tasks: conveyor.App, serve: Serve, page: Page) -> None:
    base = serve(create_api(tasks, TOKENS))
    sign_in(page, base, ADMIN)
    evil = FastAPI()

    @evil.get("/")
    def lure() -> HTMLResponse:
        return HTMLResponse(
            f'<form method="post" action="{base}/queues/default/pause">'
            '<input name="csrf" value="guessed"></form>'
            "<script>document.forms[0].submit()</script>"
        )

    elsewhere = serve(evil)
    page.goto(elsewhere)
    expect(page.locator("body")).to_contain_text("cross-site requests are refused")
    assert tasks.paused_queues() == []

    # the session cookie alone, without the page's CSRF token, changes nothing either
    cookie = next(c for c in page.context.cookies() if c["name"] == "conveyor_session")
    with httpx.Client(base_url=base, cookies={"conveyor_session": cookie["value"]}) as session:
        forged = session.post("/queues/default/pause", data={"csrf": "guessed"})
        assert forged.status_code == 403 and "stale" in forged.text
        assert session.get("/queues").is_success
    assert tasks.paused_queues() == []


def test_hostile_text_is_shown_as_text(
    tasks: conveyor.App, serve: Serve, page: Page, run_jobs: Callable[[], None]
) -> None:
    with pytest.raises(conveyor.ValidationError, match="bad queue name"):
        tasks.tasks["add"].configure(queue="<script>x</script>").enqueue(1, 2)
    job = tasks.tasks["add"].enqueue(XSS_ARG, "!")
    dead = tasks.tasks["fail"].enqueue(XSS_ERROR)
    run_jobs()
    assert tasks.queue_stats().keys() == {"default"}  # the bad queue name was never stored
    base = serve(create_api(tasks, None))
    page.goto(f"{base}/jobs/{job.id}")
    expect(page.locator("pre.json").first).to_contain_text(XSS_ARG)
    page.goto(f"{base}/jobs/{dead.id}")
    expect(page.locator("ol.errors summary")).to_contain_text(XSS_ERROR)
    page.goto(f"{base}/dlq")
    expect(page.locator("td.error-text")).to_contain_text(XSS_ERROR)
    page.goto(f"{base}/jobs?queue={quote(XSS_ARG)}")
    expect(page.locator("select[name=queue] option[selected]")).to_have_text(XSS_ARG)
    page.goto(f"{base}/jobs?search={quote(XSS_ERROR)}")
    expect(page.locator("input[name=search]")).to_have_value(XSS_ERROR)
    assert page.evaluate("window.__xss") is None
    assert page.locator("img[src=x]").count() == 0
