"""The browser path end to end: Chromium loads pages of the API served by uvicorn."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import Page

import conveyor
from conveyor.web import Tokens, create_api

from .conftest import Serve

ADMIN = "admin-token-0123456789abcdef"
READER = "read-token-0123456789abcdef"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_chromium_shows_the_served_api(app: conveyor.App, serve: Serve, page: Page) -> None:
    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    job = add.enqueue(2, 3)
    base_url = serve(create_api(app, Tokens.parse(f"admin:{ADMIN},read:{READER}")))

    health = page.goto(f"{base_url}/health")
    assert health is not None and health.status == 200
    shown = json.loads(page.locator("body").inner_text())
    assert shown["ok"] is True
    assert shown["schema_version"] == app.schema_version()

    page.goto(f"{base_url}/api/jobs")
    assert json.loads(page.locator("body").inner_text())["error"] == "this needs a bearer token"

    page.set_extra_http_headers({"Authorization": f"Bearer {READER}"})
    page.goto(f"{base_url}/api/jobs")
    listed = json.loads(page.locator("body").inner_text())
    assert [(j["id"], j["task"], j["args"]) for j in listed["jobs"]] == [(job.id, "add", [2, 3])]
