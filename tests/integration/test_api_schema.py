"""The HTTP API against its own OpenAPI schema: schemathesis generates requests for every
operation, valid and invalid ones, and checks that none gets a server error and that each
response matches the schema where the schema declares one for its status.

Requests go in-process to an API on a store of the test's own, with jobs in every state. The ids
and names of some of them are given to schemathesis as examples, so that requests hit real rows
as well as missing ones.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

import conveyor
from conveyor.circuit import Action
from conveyor.web import Tokens, create_api

ADMIN = "admin-token-0123456789abcdef"
READER = "read-token-0123456789abcdef"
TOKENS = f"admin:{ADMIN},read:{READER}"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}

#: Jobs of the `api` fixture's store, by what they are there.
JOB_IDS = {"succeeded": 1, "dead": 2, "queued": 13, "paused": 19, "cancelled": 20, "held": 21}
QUEUES = ["default", "math"]
CIRCUITS = ["render-worker"]
NEW_JOB = {"task": "add", "args": [1, 2], "priority": "high", "queue": "math"}

CONFIG = schemathesis.Config.from_dict(
    {"phases": {"stateful": {"enabled": False}}, "generation": {"mode": "all"}}
)
HYPOTHESIS = settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


class Boom(Exception):
    pass


def served_spec() -> dict[str, Any]:
    """The schema at /api/openapi.json, which does not depend on what the store holds."""
    with tempfile.TemporaryDirectory() as tmp:
        app = conveyor.App(f"sqlite:///{Path(tmp) / 'schema.db'}")
        try:
            return create_api(app, Tokens.parse(TOKENS)).openapi()
        finally:
            app.close()


def with_examples(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` with the ids and names of the `api` fixture's store as parameter examples."""
    spec = copy.deepcopy(spec)
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] != "path":
                    continue
                if parameter["name"] == "job_id":
                    parameter["examples"] = {k: {"value": v} for k, v in JOB_IDS.items()}
                elif parameter["name"] == "name":
                    names = CIRCUITS if path.startswith("/api/circuits/") else QUEUES
                    parameter["examples"] = {name: {"value": name} for name in names}
    body = spec["paths"]["/api/jobs"]["post"]["requestBody"]["content"]["application/json"]
    body["examples"] = {"add": {"value": NEW_JOB}}
    return spec


schema = schemathesis.openapi.from_dict(with_examples(served_spec()), config=CONFIG).exclude(
    # Server-Sent Events: the response never ends, so it cannot be read whole in-process.
    path="/api/events",
)


@pytest.fixture
def api(app: conveyor.App) -> FastAPI:
    """The API on a store with succeeded, dead, queued, cancelled and held jobs, a paused
    queue, an open circuit and a periodic entry (JOB_IDS, QUEUES, CIRCUITS)."""
    render = app.circuit("render-worker", failure_threshold=1)

    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="explode", max_attempts=1)
    def explode(why: str) -> None:
        raise Boom(why)

    @app.task(name="login", circuit=render)
    def login(user: str, password: str) -> None: ...

    @app.periodic("0 * * * *", name="hourly-sum", args=[1, 2])
    def hourly_sum(a: int, b: int) -> int:
        return a + b

    for n in range(6):
        add.enqueue(n, n)  # 1, 3, … 11: succeeded
        explode.enqueue(f"reason {n % 2}")  # 2, 4, … 12: dead
    app.run_worker(burst=True)
    for n in range(6):
        add.enqueue(n, 1)  # 13 … 18: queued
    add.configure(priority="high", queue="math").enqueue(9, 9)  # 19
    app.pause_queue("math")
    app.cancel_job(add.enqueue(0, 0).id)  # 20
    app.backend.sync.change_circuit(
        "render-worker", Action.FAILURE, app.clock.now(), threshold=1, reason="refused"
    )
    held = login.enqueue("ann", "hunter2")  # 21
    assert app.get_job(held.id).held_by == "render-worker"
    states = {name: app.get_job(job_id).state.value for name, job_id in JOB_IDS.items()}
    assert states == {
        "succeeded": "succeeded",
        "dead": "dead",
        "queued": "queued",
        "paused": "queued",
        "cancelled": "cancelled",
        "held": "queued",
    }
    return create_api(app, Tokens.parse(TOKENS))


@schema.parametrize()
@HYPOTHESIS
def test_no_request_gets_a_server_error(case: schemathesis.Case[Any], api: FastAPI) -> None:
    case.call_and_validate(app=api, headers=AS_ADMIN, checks=[not_a_server_error])


@schema.parametrize()
@HYPOTHESIS
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_every_response_matches_the_schema(case: schemathesis.Case[Any], api: FastAPI) -> None:
    """Where the schema declares a body for the status, the response matches it. That is the
    same on every backend, so this runs on SQLite only."""
    case.call_and_validate(app=api, headers=AS_ADMIN, checks=[response_schema_conformance])
