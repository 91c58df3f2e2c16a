"""Circuits over HTTP: their states and latest changes, and closing one from outside."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from conveyor import views
from conveyor.web.common import Shared


def router(shared: Shared) -> APIRouter:
    app = shared.app
    routes = APIRouter()

    @routes.get("/api/circuits", dependencies=[shared.read])
    def circuits() -> dict[str, Any]:
        return views.circuits_dict(app.circuits, app.circuit_states(), app.circuit_log(limit=50))

    @routes.post("/api/circuits/{name}/close", dependencies=[shared.admin])
    def close_circuit(name: str) -> dict[str, Any]:
        """Close a circuit from outside (its service is back): held jobs run again at once."""
        changed = app.close_circuit(name, reason="closed over HTTP")
        return {"circuit": name, "changed": changed, "state": "closed"}

    return routes
