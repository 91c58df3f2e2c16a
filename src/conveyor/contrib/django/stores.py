"""Where a ConveyorBackend keeps its jobs: the conveyor App of its OPTIONS, one per store and
process whatever the number of threads (Django makes a backend per thread; each App holds pools
of connections), on the URL given or the one of a Django database.

A Django database becomes a conveyor URL thus: PostgreSQL is the same database (conveyor's
tables in a schema of their own, `postgres_schema`, "conveyor" by default), so enqueue can join
its transactions; SQLite is a file of conveyor's own beside Django's (`db.sqlite3` ->
`db-conveyor.sqlite3`: conveyor wants its file to itself)."""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections

import conveyor

#: The libpq connection parameters of a PostgreSQL database's OPTIONS that reach conveyor's
#: own connections too (Django's other OPTIONS, such as `pool`, are Django's).
LIBPQ_OPTIONS = frozenset(
    {
        "channel_binding",
        "gssencmode",
        "krbsrvname",
        "options",
        "passfile",
        "service",
        "sslcert",
        "sslcrl",
        "sslkey",
        "sslmode",
        "sslnegotiation",
        "sslpassword",
        "sslrootcert",
        "target_session_attrs",
    }
)
#: The keyword arguments `conveyor.App` takes, which OPTIONS may give.
APP_OPTIONS = frozenset(inspect.signature(conveyor.App).parameters) - {"url"}
#: OPTIONS that are the backend's own.
OWN_OPTIONS = frozenset({"url", "database"})


@dataclass(frozen=True)
class Store:
    """A backend's OPTIONS, checked: an explicit conveyor `url`, or the Django `database`
    whose URL (and transactions) the store shares; and the App's other keyword arguments."""

    alias: str
    url: str | None = None
    database: str = DEFAULT_DB_ALIAS
    app_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_options(cls, alias: str, options: dict[str, Any]) -> Store:
        given = {str(key).lower(): value for key, value in options.items()}
        unknown = sorted(set(given) - APP_OPTIONS - OWN_OPTIONS)
        if unknown:
            known = ", ".join(sorted(APP_OPTIONS | OWN_OPTIONS))
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS'] has unknown option(s) {', '.join(unknown)} "
                f"(ConveyorBackend takes: {known})"
            )
        url = given.pop("url", None)
        database = given.pop("database", DEFAULT_DB_ALIAS)
        if url is not None and not isinstance(url, str):
            raise ImproperlyConfigured(f"TASKS[{alias!r}]['OPTIONS']['url'] must be text")
        return cls(alias, url, database, given)

    @property
    def shares_database(self) -> bool:
        """Whether the store is (in) the Django database, as opposed to a URL of its own."""
        return self.url is None

    def resolve_url(self) -> str:
        """The conveyor URL, read now: a Django test run renames its databases when it sets
        them up, after the backends were made."""
        return self.url if self.url is not None else url_for_database(self.database)


def url_for_database(alias: str) -> str:
    """The conveyor URL of a Django database (PostgreSQL or SQLite)."""
    if alias not in connections.settings:
        raise ImproperlyConfigured(f"ConveyorBackend: DATABASES has no database {alias!r}")
    connection = connections[alias]
    settings_dict = connection.settings_dict
    if connection.vendor == "postgresql":
        return _postgres_url(settings_dict)
    if connection.vendor == "sqlite":
        return _sqlite_url(alias, settings_dict["NAME"])
    raise ImproperlyConfigured(
        f"conveyor keeps jobs in PostgreSQL or SQLite; DATABASES[{alias!r}] is "
        f"{connection.vendor}: give the backend OPTIONS a 'url' (postgresql://... or "
        "sqlite:///jobs.db)"
    )


def _postgres_url(settings_dict: dict[str, Any]) -> str:
    user = settings_dict.get("USER") or ""
    password = settings_dict.get("PASSWORD") or ""
    host = str(settings_dict.get("HOST") or "")
    port = str(settings_dict.get("PORT") or "")
    name = settings_dict.get("NAME") or ""
    query = {
        key: str(value)
        for key, value in (settings_dict.get("OPTIONS") or {}).items()
        if key in LIBPQ_OPTIONS and value is not None
    }
    if host.startswith("/"):  # a Unix socket's directory: a parameter, not a network host
        query["host"], host = host, ""
    credentials = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
    netloc = (f"{credentials}@" if credentials else "") + host + (f":{port}" if port else "")
    url = f"postgresql://{netloc}/{quote(str(name), safe='')}"
    return f"{url}?{urlencode(query, quote_via=quote)}" if query else url


def _sqlite_url(alias: str, name: Any) -> str:
    text = str(name or "")
    if not text or text == ":memory:" or "mode=memory" in text or text.startswith("file:"):
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}] is an in-memory SQLite database ({text or 'no NAME'}), which "
            "a worker in another process cannot share: give the backend OPTIONS a 'url' "
            "(sqlite:///path/to/jobs.db), or the database a file (for tests, TEST['NAME'])"
        )
    path = Path(text).resolve()
    own = path.with_name(f"{path.stem}-conveyor{path.suffix or '.db'}")
    return f"sqlite:///{own}"


_apps: dict[tuple[str, str], conveyor.App] = {}
_apps_lock = threading.Lock()


def app_for(store: Store) -> conveyor.App:
    """The App of a store: made once per process for a URL and set of options, so the
    backends of every thread (and TASKS aliases that agree) share its pools."""
    from conveyor.contrib.django.runner import DjangoTasks

    url = store.resolve_url()
    key = (url, repr(sorted(store.app_options.items())))
    with _apps_lock:
        app = _apps.get(key)
        if app is None:
            try:
                app = conveyor.App(url, **store.app_options)
            except conveyor.ConfigurationError as exc:
                raise ImproperlyConfigured(f"TASKS[{store.alias!r}]: {exc}") from exc
            app.tasks = DjangoTasks(app)
            _apps[key] = app
        return app
