"""The figures of a peer comparison, and how they are shown: a table per store (workload,
conveyor, each peer, conveyor ÷ the fastest peer, the raw loop) and JSON."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from benchmarks.peers.options import Options

#: The systems' keys in a row's runs: conveyor, the raw loop, and `PEER` for the one peer of a
#: store that has one; a store with several names each peer by a key of its own.
CONVEYOR, PEER, RAW = "conveyor", "peer", "raw"
RAW_LOOP = {
    "sqlite": "raw sqlite3 loop",
    "postgres": "raw psycopg loop",
    "redis": "raw redis-py loop",
}
STORE_NAMES = {"sqlite": "SQLite", "postgres": "PostgreSQL", "redis": "Redis"}
#: The columns of a store with several peers (a row per system, a column per workload).
COLUMNS = {
    "enqueue.one": "enqueue\none by one",
    "enqueue.bulk": "bulk\nenqueue",
    "drain.sync": "drain\nsync",
    "drain.async": "drain\nasync",
    "startup.sync": "start to\nfirst job",
    "latency.sync.p50": "p50\nsync",
    "latency.sync.p99": "p99\nsync",
    "latency.async.p50": "p50\nasync",
    "latency.async.p99": "p99\nasync",
}
#: Rows of the raw loop alone, shown with several peers as a row of their own under the column
#: of the workload they stand beside: (that column, the row's name).
RAW_ALONE = {"drain.raw1": ("drain.sync", "raw loop,\none BRPOP a job")}


@dataclass
class Row:
    """One workload on one store: every run's figure for each system, in run order."""

    key: str
    label: str
    unit: str  # "jobs/s" or "ms"
    runs: dict[str, list[float]] = field(default_factory=dict)
    #: why a peer has no figure, or how it was measured differently
    note: str = ""

    @property
    def higher_is_better(self) -> bool:
        return self.unit.endswith("/s")

    def of(self, system: str) -> list[float]:
        return self.runs.get(system, [])

    def peers(self) -> list[str]:
        """The peers with a figure in this row."""
        return [system for system in self.runs if system not in (CONVEYOR, RAW)]

    def fastest(self) -> list[str]:
        """The best peer of each run (highest jobs/s, lowest ms), among the peers measured in
        every run conveyor was."""
        runs = len(self.of(CONVEYOR))
        peers = [p for p in self.peers() if len(self.of(p)) == runs]
        if not runs or not peers:
            return []
        sign = 1 if self.higher_is_better else -1
        return [max(peers, key=lambda p: sign * self.of(p)[i]) for i in range(runs)]

    def ratios(self) -> list[float]:
        """conveyor ÷ the fastest peer within each run (measured seconds apart); with one peer,
        conveyor ÷ that peer."""
        ours = self.of(CONVEYOR)
        theirs = [self.of(peer)[i] for i, peer in enumerate(self.fastest())]
        return [a / b for a, b in zip(ours, theirs, strict=True) if b > 0] if theirs else []


@dataclass
class StoreResults:
    """Everything measured on one store: conveyor, its peers and the raw loop."""

    store: str
    #: the one peer's name and version, "PgQueuer 1.6.0" (its figures are under `PEER`)
    peer: str = ""
    env: dict[str, Any] = field(default_factory=dict)
    #: the machine and the store's version and settings, in one line above the table
    header: str = ""
    #: how each system was run, one line each, printed under the table
    settings: list[str] = field(default_factory=list)
    rows: dict[str, Row] = field(default_factory=dict)
    #: each peer's key in the rows and its name and version, in the table's order (default:
    #: `peer` under `PEER`)
    peers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.peers and self.peer:
            self.peers = {PEER: self.peer}
        if not self.peer:
            self.peer = ", ".join(self.peers.values())

    def row(self, key: str, label: str, unit: str, note: str = "") -> Row:
        if key not in self.rows:
            self.rows[key] = Row(key, label, unit, note=note)
        return self.rows[key]

    def record(self, key: str, system: str, value: float) -> None:
        self.rows[key].runs.setdefault(system, []).append(value)

    def to_json(self) -> dict[str, Any]:
        several = len(self.peers) > 1
        rows = {}
        for key, row in self.rows.items():
            entry: dict[str, Any] = {"label": row.label, "unit": row.unit}
            for system in (CONVEYOR, *self.peers, RAW):
                if row.of(system):
                    runs = row.of(system)
                    entry[system] = {"median": statistics.median(runs), "runs": runs}
            if row.ratios():
                ratios = row.ratios()
                name = "conveyor_over_fastest_peer" if several else "conveyor_over_peer"
                entry[name] = {"median": statistics.median(ratios), "runs": ratios}
                if several:
                    entry[name]["fastest"] = row.fastest()
            if row.note:
                entry["note"] = row.note
            rows[key] = entry
        data: dict[str, Any] = {"store": self.store, "peer": self.peer}
        if several:
            data["peers"] = dict(self.peers)
        data |= {"environment": self.env, "settings": self.settings, "rows": rows}
        return data


def _digits(unit: str) -> int:
    return 1 if unit == "ms" else 0


def _number(value: float, unit: str) -> str:
    return f"{value:,.{_digits(unit)}f}"


def compact(value: float, unit: str) -> str:
    """A figure in at most 6 characters: thousands of jobs/s as "57.4k" from 10,000 on, and
    milliseconds without decimals from 100 on."""
    if unit == "ms":
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
    if value >= 100_000:
        return f"{value / 1000:.0f}k"
    return f"{value / 1000:.1f}k" if value >= 10_000 else f"{value:,.0f}"


def figure(runs: list[float], unit: str, number: Callable[[float, str], str] = _number) -> Text:
    """The median, with the range over runs underneath when there was more than one run."""
    if not runs:
        return Text("n/a", style="dim")
    text = Text(number(statistics.median(runs), unit))
    if len(runs) > 1:
        text.append(f"\n{number(min(runs), unit)}-{number(max(runs), unit)}", style="dim")
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


def _short(name: str) -> str:
    return name.split()[0]


def _runs(repeat: int) -> str:
    return f"median of {repeat} run{'s' if repeat > 1 else ''}" + (
        ", range below" if repeat > 1 else ""
    )


def table(results: StoreResults, repeat: int) -> tuple[Table, list[str]]:
    """The store's table, and the notes printed under it: with one peer a row per workload and a
    column per system; with several, a row per system and a column per workload."""
    if len(results.peers) > 1:
        return table_by_system(results, repeat)
    runs = _runs(repeat)
    store = STORE_NAMES[results.store]
    title = f"conveyor and {results.peer} on {store}: {runs}"
    grid = Table(title=title, title_justify="left")
    grid.add_column("workload")
    grid.add_column("unit")
    grid.add_column("conveyor", justify="right")
    grid.add_column(_short(results.peer), justify="right")
    grid.add_column("conveyor ÷ peer", justify="right")
    grid.add_column(RAW_LOOP[results.store], justify="right")
    for row in results.rows.values():
        if not (row.of(CONVEYOR) or row.peers()):
            continue
        label = Text(row.label)
        if row.note:
            label.append(f"\n{row.note}", style="dim")
        cells = [figure(row.of(CONVEYOR), row.unit), figure(row.of(PEER), row.unit), ratio(row)]
        raw = figure(row.of(RAW), row.unit) if row.of(RAW) else Text("")
        grid.add_row(label, row.unit, *cells, raw)
    notes: list[str] = []
    return grid, notes


def table_by_system(results: StoreResults, repeat: int) -> tuple[Table, list[str]]:
    """A row per system (conveyor, each peer, the raw loop), a column per workload: six peers
    side by side fit in 120 columns this way. Notes go under the table, marked in the header."""
    names = list(results.peers.values())
    systems = ", ".join(names[:-1]) + f" and {names[-1]}"
    store = STORE_NAMES[results.store]
    grid = Table(
        title=f"conveyor, {systems} on {store}: {_runs(repeat)}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 0, 0, 1),
        pad_edge=False,
    )
    grid.add_column("")
    notes: list[str] = []
    shown = [
        row
        for row in results.rows.values()
        if row.key not in RAW_ALONE and (row.of(CONVEYOR) or row.peers())
    ]
    for row in shown:
        header = Text(f"{COLUMNS.get(row.key, row.label)}\n{row.unit}")
        if row.note:
            notes.append(f"{'*' * (len(notes) + 1)} {row.label}: {row.note}")
            header.append(" " + "*" * len(notes))
        grid.add_column(header, justify="right")

    def cells(system: str) -> list[Text]:
        return [figure(row.of(system), row.unit, compact) for row in shown]

    grid.add_row("conveyor", *cells(CONVEYOR))
    for key, name in results.peers.items():
        grid.add_row(_short(name), *cells(key))
    grid.add_row("conveyor ÷\nfastest peer", *(ratio(row) for row in shown))
    if any(row.of(RAW) for row in shown):
        grid.add_row(
            "raw loop",
            *(figure(row.of(RAW), row.unit, compact) if row.of(RAW) else Text("") for row in shown),
        )
    for key, (column, name) in RAW_ALONE.items():
        alone = results.rows.get(key)
        if alone is None or not alone.of(RAW):
            continue
        grid.add_row(
            name,
            *(
                figure(alone.of(RAW), alone.unit, compact) if row.key == column else Text("")
                for row in shown
            ),
        )
    return grid, notes


def print_report(everything: list[StoreResults], options: Options, console: Console) -> None:
    for results in everything:
        if results.header:
            console.print(results.header, highlight=False)
        grid, notes = table(results, options.repeat)
        console.print(grid)
        for line in [*notes, *results.settings]:
            console.print(f"[dim]{line}[/dim]", highlight=False)
        console.print()
    if not everything:
        return
    several = any(len(r.peers) > 1 for r in everything)
    fastest = " (÷ the fastest peer of the run, where there are several)" if several else ""
    console.print(
        f"[dim]conveyor ÷ peer{fastest} is taken within each run (the systems take turns, "
        "seconds apart), then the median: above 1 means conveyor's figure is higher, which is "
        "better for jobs/s and worse for ms (green: conveyor ahead).[/dim]"
    )


def write_json(everything: list[StoreResults], options: Options, path: Path) -> None:
    config = {
        "jobs": options.jobs,
        "batch": options.batch,
        "repeat": options.repeat,
        "latency_rate": options.latency_rate,
        "latency_seconds": options.latency_seconds,
        "stores": list(options.stores),
        "groups": list(options.groups),
    }
    data = {"config": config, "stores": {r.store: r.to_json() for r in everything}}
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
