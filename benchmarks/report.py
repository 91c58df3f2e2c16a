"""The figures as a terminal table (rich) and as JSON."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from benchmarks.suite import (
    PEERS,
    RAW_WORDS,
    SERVERS,
    Metric,
    Results,
    cli_drain_key,
    drain_key,
)

RAW_LOOP = {
    "sqlite": "raw sqlite3 loop",
    "postgres": "raw psycopg loop",
    "redis": "raw redis-py loop",
}


def _raw_words(backend: str, kind: str, per: int) -> tuple[str, str]:
    """What the raw loop does ("insert", "RPOP drain") and what `per` jobs go in ("txn",
    "round trip")."""
    words = RAW_WORDS[backend]
    unit = "txn" if words.per == "transaction" else words.per
    if kind == "insert":
        return words.insert, unit
    return (words.drain_one if per == 1 else words.drain_many), unit


def raw_short(backend: str, kind: str, per: int) -> str:
    """The raw loop's workload in a few words: "insert, 1 per txn", "RPOP drain, 100 per round
    trip"."""
    what, unit = _raw_words(backend, kind, per)
    return f"{what}, {per:,} per {unit}"


def _figure(metric: Metric, unit: str = "/s", digits: int = 0) -> Text:
    """The median, with the range over runs underneath when there was more than one run."""
    text = Text(f"{metric.median:,.{digits}f}{unit}")
    if len(metric.runs) > 1:
        text.append(f"\n{min(metric.runs):,.{digits}f}-{max(metric.runs):,.{digits}f}", style="dim")
    return text


def _has_targets(results: Results, group: str) -> bool:
    """Whether any target is on a metric of `group` ("enqueue.", "drain.", "latency.", ...):
    Redis has few targets, so a table of its may have none and then no target columns."""
    return any(t.subject.startswith(group) for t in results.targets)


def _target_columns(table: Table, shown: bool) -> None:
    """A target and its verdict, if `shown`."""
    if shown:
        table.add_column("target")
        table.add_column("")


def _target_cells(results: Results, subjects: list[str], shown: bool) -> list[Text]:
    """The cells of `_target_columns`: none where there are no such columns."""
    return list(_targets(results, subjects)) if shown else []


def _targets(results: Results, subjects: list[str]) -> tuple[Text, Text]:
    """The targets on `subjects`, one per line, and whether each is met."""
    labels, verdicts = Text(), Text()
    for target in results.targets:
        if target.subject not in subjects:
            continue
        value = results.value(target.subject)
        assert value is not None
        if labels:
            labels.append("\n")
            verdicts.append("\n")
        labels.append(target.label)
        if target.met(value):
            verdicts.append("met", style="green")
        else:
            verdicts.append("above" if target.op == "<=" else "below", style="red")
    return labels, verdicts


def throughput_table(results: Results) -> Table:
    config = results.config
    m = results.metrics
    runs = config.repeat
    table = Table(
        title=f"Throughput, jobs/s: median of {runs} run{'s' if runs > 1 else ''}"
        + (" (range below)" if runs > 1 else ""),
        title_justify="left",
    )
    table.add_column("workload")
    table.add_column("conveyor", justify="right")
    table.add_column(RAW_LOOP[config.backend], justify="right")
    table.add_column("share", justify="right")
    with_targets = _has_targets(results, "enqueue.") or _has_targets(results, "drain.")
    _target_columns(table, with_targets)

    def row(metric: str, label: str, against: str = "", against_label: str = "") -> None:
        if metric not in m:
            return
        ratio_key, speedup_key = f"{metric}/raw", f"{metric}/p1"
        name = Text(label)
        raw_cell = Text()
        if against in m:
            name.append(f"\nvs raw {against_label}", style="dim")
            raw_cell = _figure(m[against])
        share = Text()
        if ratio_key in results.ratios:
            share.append(f"{results.ratios[ratio_key].median:.1%}")
        if speedup_key in results.ratios:  # -p N against -p 1
            share.append(f"\n{results.ratios[speedup_key].median:.2f}x -p 1", style="dim")
        if f"{metric}/plain" in results.ratios:  # limited against the same drain unlimited
            plain = results.ratios[f"{metric}/plain"].median
            share.append(f"\n{plain:.0%} of unlimited", style="dim")
        targets = _target_cells(results, [metric, ratio_key, speedup_key], with_targets)
        table.add_row(name, _figure(m[metric]), raw_cell, share, *targets)

    backend = config.backend
    row("enqueue.one", "enqueue one by one", "raw.insert.1", raw_short(backend, "insert", 1))
    for batch in config.batches:
        row(
            f"enqueue.many.{batch}",
            f"enqueue_many, {batch:,} per call",
            f"raw.insert.{batch}",
            raw_short(backend, "insert", batch),
        )
    row(f"enqueue.call.{config.one_call}", f"enqueue_many, one call of {config.one_call:,}")
    raw_drain = f"raw.drain.{config.raw_batch}"
    for c in config.concurrencies:
        for kind in ("sync", "async"):
            row(
                drain_key(kind, c),
                f"drain, {kind} no-op, concurrency {c}",
                raw_drain,
                raw_short(backend, "drain", config.raw_batch),
            )
    for c in config.concurrencies:
        row(
            drain_key("keyed", c),
            f"drain, async no-op limited per key, concurrency {c}",
            raw_drain,
            raw_short(backend, "drain", config.raw_batch),
        )
    for c in config.concurrencies:
        for p in config.processes:
            row(
                cli_drain_key(p, c),
                f"drain, CLI -p {p}, concurrency {c}",
                raw_drain,
                raw_short(backend, "drain", config.raw_batch),
            )
    raw_drains = sorted((k for k in m if k.startswith("raw.drain.")), key=lambda k: int(k[10:]))
    if raw_drains:
        table.add_section()
    for key in raw_drains:
        per = int(key.rsplit(".", 1)[1])
        what, unit = _raw_words(backend, "drain", per)
        label = f"raw {what}, {per} job{'s' if per > 1 else ''} per {unit}"
        table.add_row(Text(label, style="dim"), "", _figure(m[key]))
    return table


def _medians_table(
    results: Results, title: str, with_targets: bool, first: str, *right: str
) -> Table:
    """A table titled "`title`: median of N runs", its first column `first`, then the columns
    `right` (right-justified), and a target and its verdict if `with_targets`."""
    runs = results.config.repeat
    title = f"{title}: median of {runs} run{'s' if runs > 1 else ''}"
    # (a narrow table, without targets, would wrap its title)
    table = Table(title=title, title_justify="left", min_width=len(title))
    table.add_column(first)
    for name in right:
        table.add_column(name, justify="right")
    _target_columns(table, with_targets)
    return table


def latency_table(results: Results) -> Table | None:
    m = results.metrics
    if "latency.p50" not in m:
        return None
    with_targets = _has_targets(results, "latency.")
    table = _medians_table(results, "Latency, ms", with_targets, "percentile", "conveyor")
    for key, label in (
        ("latency.p50", "p50"),
        ("latency.p95", "p95"),
        ("latency.p99", "p99"),
        ("latency.max", "max"),
    ):
        targets = _target_cells(results, [key], with_targets)
        table.add_row(label, _figure(m[key], unit="", digits=1), *targets)
    return table


def scale_table(results: Results) -> Table | None:
    """The drain rate as the tables grow, and the worker's memory over a long drain."""
    m = results.metrics
    if "scale.fresh" not in m:
        return None
    title = "Scale: one `conveyor worker --burst`, sync no-ops, concurrency 10"
    with_targets = _has_targets(results, "scale.")
    table = _medians_table(results, title, with_targets, "workload", "conveyor", "share")
    for key, against in (
        ("scale.fresh", ""),
        ("scale.backlog.first", "fresh"),
        ("scale.backlog.last", ""),
        ("scale.backlog", ""),
        ("scale.after", "fresh"),
        ("scale.vacuumed", "fresh"),
        ("scale.rss.early", ""),
        ("scale.rss.end", "early"),
    ):
        if key not in m:
            continue  # VACUUM: PostgreSQL only
        metric = m[key]
        unit, digits = (" MiB", 1) if metric.unit == "MiB" else ("/s", 0)
        ratio_key = f"{key}/{against}"
        share = Text()
        if ratio_key in results.ratios:
            share.append(f"{results.ratios[ratio_key].median:.1%} of {against}")
        targets = _target_cells(results, [ratio_key], with_targets)
        table.add_row(metric.label, _figure(metric, unit, digits), share, *targets)
    return table


def peers_table(results: Results) -> Table | None:
    """Other Python queues' published figures on PostgreSQL: quoted, not measured here."""
    if results.config.backend != "postgres":
        return None
    table = Table(title="Quoted figures, not measured here", title_justify="left")
    table.add_column("system", style="dim")
    table.add_column("workload", style="dim")
    table.add_column("jobs/s (quoted)", justify="right", style="dim")
    for peer in PEERS:
        table.add_row(peer.system, peer.what, f"~{peer.per_second:,.0f}")
    return table


def _header(results: Results) -> list[str]:
    env = results.env
    config = results.config
    m = results.metrics
    machine = f"Python {env['python']} · {env['cpus']} CPUs"
    if config.backend == "postgres":
        lines = [
            f"[bold]conveyor on PostgreSQL[/bold] {env['postgres']} "
            f"(synchronous_commit={env['postgres_synchronous_commit']}, "
            f"fsync={env['postgres_fsync']}, autovacuum={env['postgres_autovacuum']}, "
            f"{env['postgres_connection']}) · "
            f"psycopg {env['psycopg']} · {machine}",
            "every workload in a fresh schema, dropped afterwards; the raw loop is one sync "
            "psycopg connection in autocommit",
        ]
    elif config.backend == "redis":
        hiredis = ", hiredis" if env["hiredis"] else ""
        lines = [
            f"[bold]conveyor on Redis[/bold] {env['redis']} "
            f"(appendonly={env['redis_appendonly']}, save={env['redis_save']!r}, "
            f"database {env['redis_db']}, {env['redis_connection']}) · "
            f"redis-py {env['redis_py']}{hiredis} · {machine}",
            "every workload under a fresh key prefix, its keys deleted afterwards; the raw loop "
            "is one sync redis-py client on one list, its database emptied (FLUSHDB) before "
            "and after",
        ]
    else:
        lines = [
            f"[bold]conveyor on SQLite[/bold] {env['sqlite']} (WAL, synchronous=NORMAL) · {machine}"
        ]
    lines.append(f"structlog at {env['log_level']} in the benchmark and worker processes")
    if any(k.startswith(("enqueue.", "drain.", "raw.")) for k in m):
        drains = "a drain is one worker process, run_worker(burst=True)"
        if config.backend in SERVERS:
            drains += (
                "; `conveyor worker -p N --burst` drains are timed from the first start to the "
                "last finish stamped in the jobs"
            )
        lines.append(f"throughput: {config.jobs:,} jobs per workload; {drains}")
    if "latency.jobs" in m:
        clock = {"postgres": "the server's now()", "redis": "the server's TIME"}.get(
            config.backend, "this machine's clock"
        )
        lines.append(
            f"latency: started_at - created_at ({clock}), {m['latency.jobs'].median:,.0f} jobs "
            f"enqueued at {m['latency.rate'].median:.0f} jobs/s, one `conveyor worker` "
            f"(concurrency {config.latency_concurrency})"
        )
    return lines


def print_report(results: Results, console: Console) -> None:
    m = results.metrics
    console.print(Group(*_header(results)))
    console.print()
    if any(k.startswith(("enqueue.", "drain.", "raw.")) for k in m):
        console.print(throughput_table(results))
        console.print()
    latency = latency_table(results)
    if latency is not None:
        console.print(latency)
        console.print()
    scale = scale_table(results)
    if scale is not None:
        console.print(scale)
        console.print()
    peers = peers_table(results)
    if peers is not None:
        console.print(peers)
        console.print(
            "[dim]published figures for other Python queues on PostgreSQL (a 2-core machine, "
            "no-op jobs, one worker process), quoted for scale from the PostgreSQL backend's "
            "issue: nothing in this run measured them[/dim]"
        )
        console.print()
    console.print(
        f"[dim]share = conveyor's figure / the {RAW_LOOP[results.config.backend]}'s, both "
        "measured in the same run (median over runs)."
        + (" Targets are reported, not enforced." if results.targets else "")
        + "[/dim]"
    )


def write_json(results: list[Results], path: Path) -> None:
    """One backend: its results object; several: {"backends": {name: results, ...}}."""
    if len(results) == 1:
        data = results[0].to_json()
    else:
        data = {"backends": {r.config.backend: r.to_json() for r in results}}
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
