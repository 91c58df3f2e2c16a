"""A throwaway PostgreSQL cluster, made by the suite for the suite: `initdb` into a temporary
folder, started with `pg_ctl` on a free port (127.0.0.1 only, its unix socket inside the
folder), removed at the end. Destructive faults (stopping server processes, restarting it,
read-only, exhausting connections) happen here and never on a shared server.

As root the server programs run as the `postgres` user (`runuser`), since PostgreSQL refuses
to run as root; as anyone else they run as that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

#: Room for the 1,000-enqueuer storm: 8 processes with a pool of 10 each, workers, the test.
MAX_CONNECTIONS = 150
#: Settings of the throwaway server: small and fast. What it commits it keeps through a crash
#: of its own (`pg_ctl restart -m immediate`), as a real server does: synchronous_commit stays
#: on, or a crash would undo commits already acknowledged (a claim undone: its job run twice
#: under one attempt). Only against a crash of the machine is it not durable (fsync off).
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "shared_buffers": "'32MB'",
    "max_connections": str(MAX_CONNECTIONS),
    "fsync": "off",
    "synchronous_commit": "on",
    "full_page_writes": "off",
    "max_wal_size": "'256MB'",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",
}
START_TIMEOUT_S = 60


class Unavailable(Exception):
    """The cluster cannot be made here (no server programs, no user to run them as)."""


def server_bin_dir() -> Path:
    """The folder of initdb, pg_ctl and postgres: on PATH, else the newest Debian install."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if not candidates:
        raise Unavailable(
            "no PostgreSQL server programs (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin"
        )
    return Path(candidates[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    bin_dir: Path
    root: Path
    port: int
    run_as: str | None  # None: as this user

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    # -- life -------------------------------------------------------------------------------

    @classmethod
    def create(cls) -> Cluster:
        bin_dir = server_bin_dir()
        run_as: str | None = None
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                raise Unavailable(
                    "running as root without `runuser` to start PostgreSQL as another user"
                )
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable(
                    "running as root and there is no `postgres` user to run the server as"
                ) from None
            run_as = "postgres"
        # Not pytest's tmp_path: its parents are private to root, and the server runs as
        # postgres. A folder of its own in the system's temporary folder, owned by that user.
        root = Path(tempfile.mkdtemp(prefix="conveyor-faults-pg-"))
        if run_as is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        cluster = cls(bin_dir, root, _free_port(), run_as)
        try:
            cluster._initdb()
            cluster.start()
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    def _command(self, program: str, *args: str) -> list[str]:
        command = [str(self.bin_dir / program), *args]
        return command if self.run_as is None else ["runuser", "-u", self.run_as, "--", *command]

    def _run(self, program: str, *args: str, timeout: float = START_TIMEOUT_S) -> str:
        done = subprocess.run(
            self._command(program, *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.root,
        )
        if done.returncode != 0:
            raise Unavailable(
                f"{program} {' '.join(args)} failed ({done.returncode}):\n"
                f"{done.stdout}{done.stderr}\n{self.log_tail()}"
            )
        return done.stdout

    def _initdb(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "--auth=trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        sockets = self.root / "sock"
        sockets.mkdir()
        if self.run_as is not None:
            owner = pwd.getpwnam(self.run_as)
            os.chown(sockets, owner.pw_uid, owner.pw_gid)
        settings = {**SETTINGS, "port": str(self.port), "unix_socket_directories": f"'{sockets}'"}
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# conveyor fault suite\n")
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())

    def start(self) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "start",
        )
        self.wait_ready()

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", mode, "stop")

    def restart(self, mode: str = "immediate") -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "-m",
            mode,
            "restart",
        )
        self.wait_ready()

    def is_running(self) -> bool:
        done = subprocess.run(
            self._command("pg_ctl", "-D", str(self.data), "status"),
            capture_output=True,
            check=False,
            cwd=self.root,
        )
        return done.returncode == 0

    def destroy(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.continue_all()
                subprocess.run(
                    self._command("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"),
                    capture_output=True,
                    check=False,
                    timeout=START_TIMEOUT_S,
                    cwd=self.root,
                )
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- talking to it ----------------------------------------------------------------------

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        options: dict[str, Any] = {"autocommit": True, "connect_timeout": 3, **kwargs}
        return psycopg.connect(self.url, **options)

    def sql(self, query: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def ready(self) -> bool:
        try:
            self.sql("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"PostgreSQL did not accept connections within {timeout}s\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def backend_pids(self, application_name: str) -> list[int]:
        rows = self.sql(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %(name)s",
            {"name": application_name},
        )
        return sorted(int(pid) for (pid,) in rows)

    def application_names(self) -> list[str]:
        rows = self.sql(
            "SELECT DISTINCT application_name FROM pg_stat_activity "
            "WHERE backend_type = 'client backend'"
        )
        return sorted(str(name) for (name,) in rows)

    def server_pids(self) -> list[int]:
        """The postmaster and every process it started (from /proc: works while backends are
        stopped or the server refuses connections)."""
        pid_file = self.data / "postmaster.pid"
        try:
            postmaster = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        pids = [postmaster]
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                pids.append(int(Path(stat).parent.name))
        return pids

    def continue_all(self) -> None:
        """SIGCONT every server process (a scenario that stopped some may have failed)."""
        for pid in self.server_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def reset(self) -> None:
        """Back to a usable server after a scenario: every process running, no ALTER SYSTEM
        left, no session of the scenario's left."""
        self.continue_all()
        if not self.is_running():
            self.start()
        try:
            self.wait_ready(timeout=10)
        except AssertionError:
            self.restart("immediate")  # e.g. every connection slot still taken: end them all
        with self.connect() as conn:
            conn.execute("ALTER SYSTEM RESET ALL")
            conn.execute("SELECT pg_reload_conf()")
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )

    def drop_schema(self, schema: str) -> None:
        self.sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "--- PostgreSQL log ---\n" + "\n".join(text)
