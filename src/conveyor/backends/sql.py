"""Named SQL statements kept in `.sql` files: `-- name: NAME` starts each one."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

_HEADER = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def state_lists() -> dict[str, str]:
    """The state sets of `conveyor.job` as SQL lists, for the `{name_states}` placeholders of
    the queries: every state set is written once, in Python."""
    from conveyor import job

    sets = {
        "finished_states": job.FINISHED_STATES,
        "unfinished_states": job.UNFINISHED_STATES,
        "cancellable_states": job.CANCELLABLE_STATES,
        "due_states": job.DUE_STATES,
        "left_states": job.LEFT_STATES,
        "to_run_states": job.TO_RUN_STATES,
        "held_states": job.HELD_STATES,
    }
    order = list(job.JobState)
    return {
        name: ", ".join(f"'{s.value}'" for s in sorted(states, key=order.index))
        for name, states in sets.items()
    }


class Queries:
    """The statements of one `.sql` file, read as attributes: `queries.claim`."""

    def __init__(self, text: str, source: str) -> None:
        self._source = source
        self._by_name: dict[str, str] = {}
        parts = _HEADER.split(text)
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in self._by_name:
                raise ValueError(f"{source}: query {name!r} is defined twice")
            self._by_name[name] = body.strip().rstrip(";").strip()

    @classmethod
    def load(cls, package: str, filename: str) -> Queries:
        """The file's queries, with the state sets filled in."""
        text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
        return cls(text, f"{package}/{filename}").substitute(**state_lists())

    def substitute(self, **names: str) -> Queries:
        """A copy with every `{name}` placeholder replaced (schema names and the like)."""
        copy = Queries("", self._source)
        for query, text in self._by_name.items():
            for name, value in names.items():
                text = text.replace("{" + name + "}", value)
            copy._by_name[query] = text
        return copy

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._by_name)

    def __getattr__(self, name: str) -> str:
        try:
            return self._by_name[name]
        except KeyError:
            raise AttributeError(f"{self._source} has no query named {name!r}") from None


class Migration:
    """One versioned schema step: `NNNN_name.sql` with `-- migrate:up` and `-- migrate:down`."""

    def __init__(self, version: int, name: str, up: str, down: str) -> None:
        self.version = version
        self.name = name
        self.up = up
        self.down = down

    def __repr__(self) -> str:
        return f"Migration({self.version}, {self.name!r})"


_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def load_migrations(package: str) -> list[Migration]:
    """Every migration in `package`'s folder, in version order."""
    found: list[Migration] = []
    for entry in resources.files(package).iterdir():
        match = _MIGRATION_FILE.match(Path(entry.name).name)
        if not match:
            continue
        text = entry.read_text(encoding="utf-8")
        up, sep, down = text.partition("-- migrate:down")
        if not sep or "-- migrate:up" not in up:
            raise ValueError(f"{entry.name}: needs '-- migrate:up' then '-- migrate:down'")
        found.append(
            Migration(
                int(match.group(1)),
                match.group(2),
                up.split("-- migrate:up", 1)[1].strip(),
                down.strip(),
            )
        )
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise ValueError(f"{package}: migration versions must run 1, 2, 3, ...; found {versions}")
    return found
