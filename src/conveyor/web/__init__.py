"""conveyor over HTTP: `conveyor serve MODULE:APP` (FastAPI on uvicorn)."""

from conveyor.web.api import create_api
from conveyor.web.auth import Tokens

__all__ = ["Tokens", "create_api"]
