"""conveyor over HTTP: `conveyor serve MODULE:APP` (FastAPI on uvicorn).

`create_api` (in `app`) assembles the application: the JSON API's routers (`api`), the metrics
(`metrics`) and the dashboard (`dashboard`), which share what `common` holds; `guard` wraps it
all, and `server` runs it on uvicorn.
"""

from conveyor.web.app import create_api
from conveyor.web.auth import Tokens

__all__ = ["Tokens", "create_api"]
