"""The figures of a peer comparison, and how they are shown: a table per store (workload,
conveyor, the peer, conveyor ÷ peer, the raw loop) and JSON."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from benchmarks.peers.options import Options

CONVEYOR, PEER, RAW = "conveyor", "peer", "raw"
RAW_LOOP = {"sqlite": "raw sqlite3 loop", "postgres": "raw psycopg loop"}
STORE_NAMES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}


@dataclass
class Row:
    """One workload on one store: every run's figure for each system, in run order."""

    key: str
    label: str
    unit: str  # "jobs/s" or "ms"
    runs: dict[str, list[float]] = field(default_factory=dict)
    #: why the peer has no figure, or how it was measured differently
    note: str = ""

    @property
    def higher_is_better(self) -> bool:
        return self.unit.endswith("/s")

    def of(self, system: str) -> list[float]:
        return self.runs.get(system, [])

    def ratios(self) -> list[float]:
        """conveyor ÷ peer within each run (the two were measured seconds apart)."""
        ours, theirs = self.of(CONVEYOR), self.of(PEER)
        if not ours or len(ours) != len(theirs):
            return []
        return [a / b for a, b in zip(ours, theirs, strict=True) if b > 0]


@dataclass
class StoreResults:
    """Everything measured on one store: conveyor, its peer and the raw loop."""

    store: str
    peer: str  # the peer's name and version, "PgQueuer 1.6.0"
    env: dict[str, Any] = field(default_factory=dict)
    #: the machine and the store's version and settings, in one line above the table
    header: str = ""
    #: how each system was run, one line each, printed under the table
    settings: list[str] = field(default_factory=list)
    rows: dict[str, Row] = field(default_factory=dict)

    def row(self, key: str, label: str, unit: str, note: str = "") -> Row:
        if key not in self.rows:
            self.rows[key] = Row(key, label, unit, note=note)
        return self.rows[key]

    def record(self, key: str, system: str, value: float) -> None:
        self.rows[key].runs.setdefault(system, []).append(value)

    def to_json(self) -> dict[str, Any]:
        rows = {}
        for key, row in self.rows.items():
            entry: dict[str, Any] = {"label": row.label, "unit": row.unit}
            for system in (CONVEYOR, PEER, RAW):
                if row.of(system):
                    runs = row.of(system)
                    entry[system] = {"median": statistics.median(runs), "runs": runs}
            if row.ratios():
                entry["conveyor_over_peer"] = {
                    "median": statistics.median(row.ratios()),
                    "runs": row.ratios(),
                }
            if row.note:
                entry["note"] = row.note
            rows[key] = entry
        return {
            "store": self.store,
            "peer": self.peer,
            "environment": self.env,
            "settings": self.settings,
            "rows": rows,
        }


def _digits(unit: str) -> int:
    return 1 if unit == "ms" else 0


def figure(runs: list[float], unit: str) -> Text:
    """The median, with the range over runs underneath when there was more than one run."""
    if not runs:
        return Text("n/a", style="dim")
    digits = _digits(unit)
    text = Text(f"{statistics.median(runs):,.{digits}f}")
    if len(runs) > 1:
        text.append(f"\n{min(runs):,.{digits}f}-{max(runs):,.{digits}f}", style="dim")
    return text


def ratio(row: Row) -> Text:
    ratios = row.ratios()
    if not ratios:
        return Text("")
    median = statistics.median(ratios)
    better = median > 1 if row.higher_is_better else median < 1
    text = Text(f"{median:.2f}x", style="green" if better else "red")
    if len(ratios) > 1:
        text.append(f"\n{min(ratios):.2f}-{max(ratios):.2f}", style="dim")
    return text


def table(results: StoreResults, repeat: int) -> Table:
    runs = f"median of {repeat} run{'s' if repeat > 1 else ''}" + (
        ", range below" if repeat > 1 else ""
    )
    title = f"conveyor and {results.peer} on {STORE_NAMES[results.store]}: {runs}"
    grid = Table(title=title, title_justify="left")
    grid.add_column("workload")
    grid.add_column("unit")
    grid.add_column("conveyor", justify="right")
    grid.add_column(results.peer.split()[0], justify="right")
    grid.add_column("conveyor ÷ peer", justify="right")
    grid.add_column(RAW_LOOP[results.store], justify="right")
    for row in results.rows.values():
        if not (row.of(CONVEYOR) or row.of(PEER)):
            continue
        label = Text(row.label)
        if row.note:
            label.append(f"\n{row.note}", style="dim")
        raw = figure(row.of(RAW), row.unit) if row.of(RAW) else Text("")
        grid.add_row(
            label,
            row.unit,
            figure(row.of(CONVEYOR), row.unit),
            figure(row.of(PEER), row.unit),
            ratio(row),
            raw,
        )
    return grid


def print_report(everything: list[StoreResults], options: Options, console: Console) -> None:
    for results in everything:
        if results.header:
            console.print(results.header, highlight=False)
        console.print(table(results, options.repeat))
        for line in results.settings:
            console.print(f"[dim]{line}[/dim]", highlight=False)
        console.print()
    console.print(
        "[dim]conveyor ÷ peer is taken within each run (the systems take turns, seconds apart), "
        "then the median: above 1 means conveyor's figure is higher, which is better for jobs/s "
        "and worse for ms (green: conveyor ahead).[/dim]"
    )


def write_json(everything: list[StoreResults], options: Options, path: Path) -> None:
    config = {
        "jobs": options.jobs,
        "batch": options.batch,
        "repeat": options.repeat,
        "latency_rate": options.latency_rate,
        "latency_seconds": options.latency_seconds,
        "groups": list(options.groups),
    }
    data = {"config": config, "stores": {r.store: r.to_json() for r in everything}}
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
