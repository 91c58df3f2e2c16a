"""Scenario 12: poison outcomes, on every store.

Tasks whose exception message, result or progress stage holds a NUL character or a lone
surrogate, text neither store can keep as it is, mixed into a batch of ordinary jobs. Every
other job of the batch must succeed (none stuck running), a `--burst` worker must end by
itself, SIGTERM must end a worker within its grace and a little, and the poison jobs must end
in a final state with their text made storable (conveyor replaces NUL and lone surrogates with
U+FFFD).
"""

from __future__ import annotations

import signal
import time
from typing import Any

from acceptance.conftest import WorkerProcess

from .harness import Scenario

POISON_TASKS = """
BAD = {"nul": "bad" + chr(0) + "text", "surrogate": "bad" + chr(0xD800) + "text"}
# Retried at once: a --burst worker leaves for later what is due later, and each poison job
# must end within the burst (a retry 0.1 s out was left whenever the rest took less).


@app.task(name="poison_error", pass_context=True, max_attempts=2, backoff=conveyor.fixed(0))
async def poison_error(ctx, kind):
    journal("start", ctx.job_id, ctx.attempt, _os.getpid(), now())
    journal("raise", ctx.job_id, ctx.attempt, _os.getpid(), now())
    raise ValueError(BAD[kind])


@app.task(name="poison_result", pass_context=True, max_attempts=2, backoff=conveyor.fixed(0))
async def poison_result(ctx, kind):
    journal("start", ctx.job_id, ctx.attempt, _os.getpid(), now())
    journal("end", ctx.job_id, ctx.attempt, _os.getpid(), now())
    return BAD[kind]


@app.task(name="poison_stage", pass_context=True, max_attempts=2, backoff=conveyor.fixed(0))
async def poison_stage(ctx, kind):
    journal("start", ctx.job_id, ctx.attempt, _os.getpid(), now())
    try:
        await ctx.progress(50, stage=BAD[kind])
    except BaseException:
        journal("raise", ctx.job_id, ctx.attempt, _os.getpid(), now())  # a retry follows
        raise
    journal("end", ctx.job_id, ctx.attempt, _os.getpid(), now())
    return f"{_os.getpid()}:{ctx.attempt}"


@app.task(name="poison_stage_sync", pass_context=True, max_attempts=2,
          backoff=conveyor.fixed(0))
def poison_stage_sync(ctx, kind):
    journal("start", ctx.job_id, ctx.attempt, _os.getpid(), now())
    try:
        ctx.progress(50, stage=BAD[kind])
    except BaseException:
        journal("raise", ctx.job_id, ctx.attempt, _os.getpid(), now())  # a retry follows
        raise
    journal("end", ctx.job_id, ctx.attempt, _os.getpid(), now())
    return f"{_os.getpid()}:{ctx.attempt}"
"""

POISONS = ["poison_error", "poison_result", "poison_stage", "poison_stage_sync"]
KINDS = ["nul", "surrogate"]
REPLACED = "bad\ufffdtext"
ORDINARY = 300
#: A burst over 300 tiny jobs takes a second or two; this is what a stuck one is given.
BURST_DEADLINE_S = 15.0
DRAIN_S = 10.0
GRACE_S = 2.0
#: As in test_sigterm.py: the exit's writes and the process's end on a loaded machine.
SHUTDOWN_SLACK_S = 3.0
#: No fault victims: nothing to bound.
NO_VICTIM_SLACK_S = 0.0


def enqueue_batch(scenario: Scenario) -> dict[int, tuple[str, str]]:
    """Ordinary jobs with the poison ones in the middle; returns the poison jobs' (task, kind)."""
    scenario.enqueue(ORDINARY // 2, task="work", ms=5)
    poison: dict[int, tuple[str, str]] = {}
    for task in POISONS:
        for kind in KINDS:
            job = getattr(scenario.tasks, task).enqueue(kind)
            scenario.tasks.journal("enq", job.id, 0, scenario.tasks.now())
            poison[job.id] = (task, kind)
    scenario.enqueue(ORDINARY // 2, task="work_sync", ms=5, first=ORDINARY // 2)
    return poison


def unstorable(value: Any) -> bool:
    """Text a store cannot keep: a NUL character or a lone surrogate, anywhere inside."""
    if isinstance(value, str):
        return "\x00" in value or any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return any(unstorable(v) for v in value.values())
    if isinstance(value, list):
        return any(unstorable(v) for v in value)
    return False


def check_poison(scenario: Scenario, poison: dict[int, tuple[str, str]]) -> None:
    """Each poison job ended (succeeded or dead) with its text stored, made storable."""
    for job_id, (task, kind) in poison.items():
        job = scenario.app.get_job(job_id)
        state = job.state.value
        where = f"{task}({kind!r}) job {job_id} is {state}"
        if state not in ("succeeded", "dead"):
            scenario.problems.append(f"{where}: a poison job must end succeeded or dead")
            continue
        if task == "poison_error":
            messages = [e.get("message") for e in job.errors]
            if state != "dead" or REPLACED not in messages:
                scenario.problems.append(
                    f"{where} with errors {messages!r}: its error message "
                    f"must be stored as {REPLACED!r}"
                )
        elif task == "poison_result" and job.result != REPLACED:
            scenario.problems.append(f"{where} with result {job.result!r}, not {REPLACED!r}")
        elif task.startswith("poison_stage") and job.stage != REPLACED:
            scenario.problems.append(f"{where} with stage {job.stage!r}, not {REPLACED!r}")
        if unstorable([job.result, job.stage, job.errors]):
            scenario.problems.append(f"{where}: text still holds NUL or a lone surrogate")


def test_poison_outcomes_do_not_block_a_burst(scenario: Scenario) -> None:
    scenario.open(POISON_TASKS)
    poison = enqueue_batch(scenario)

    worker = scenario.start_worker("--burst")
    try:
        code = worker.proc.wait(BURST_DEADLINE_S)
    except Exception:
        code = None
    scenario.extra["burst_exit"] = code
    if code != 0:
        scenario.problems.append(
            f"the --burst worker {'did not end' if code is None else f'exited {code}'} within "
            f"{BURST_DEADLINE_S:.0f}s (its batch: {ORDINARY} ordinary jobs and "
            f"{len(poison)} poison ones)\n{worker.tail(20)}"
        )
        worker.kill()
    check_poison(scenario, poison)
    scenario.check(slack=NO_VICTIM_SLACK_S)


def exit_after_sigterm(scenario: Scenario, worker: WorkerProcess) -> None:
    signalled = time.monotonic()
    worker.send(signal.SIGTERM)
    limit = GRACE_S + SHUTDOWN_SLACK_S
    try:
        code = worker.proc.wait(limit)
    except Exception:
        code = None
    scenario.extra["exit_s"] = round(time.monotonic() - signalled, 2)
    if code != 0:
        scenario.problems.append(
            f"worker {worker.pid} {'did not exit' if code is None else f'exited {code}'} "
            f"within its grace + {SHUTDOWN_SLACK_S}s ({limit:.0f}s) of SIGTERM\n{worker.tail(20)}"
        )
        worker.kill()


def test_sigterm_ends_a_worker_that_met_poison(scenario: Scenario) -> None:
    scenario.open(POISON_TASKS)
    poison = enqueue_batch(scenario)

    worker = scenario.start_worker("--grace", str(GRACE_S))
    scenario.drain(timeout=DRAIN_S)
    exit_after_sigterm(scenario, worker)
    check_poison(scenario, poison)
    scenario.check(slack=NO_VICTIM_SLACK_S, stop=False)
