"""A private PostgreSQL primary and its streaming replica, made the way docs/deploy.md says:
`initdb` for the primary, `pg_basebackup -R` (with a replication slot) for the replica.

Both run from a temp dir on free ports and are removed at the end. PostgreSQL refuses to run
as root, so as root the commands run as the `postgres` account (Debian's packages make it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from tests.support.live_server import free_port

USER = "postgres"


def bindir() -> Path:
    """Where the server's programs are (Debian keeps them off PATH)."""
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
        return Path(found.stdout.strip())
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
    return Path(initdb).resolve().parent


def _as_owner(command: Sequence[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", USER, "--", *command]
    return list(command)


def _run(*command: str) -> None:
    done = subprocess.run(_as_owner(command), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")


@dataclass
class Node:
    name: str
    data_dir: Path
    port: int
    log: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data_dir.parent} -c listen_addresses=127.0.0.1"
        _run(str(bindir() / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log), "-w",
             "-t", "60", "-o", options, "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """`fast`: sessions are disconnected, like an operator's stop; `immediate`: a crash."""
        _run(str(bindir() / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        status = subprocess.run(
            _as_owner([str(bindir() / "pg_ctl"), "-D", str(self.data_dir), "status"]),
            capture_output=True,
        )
        return status.returncode == 0

    def query(self, statement: str, database: str = "postgres") -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url(database), autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(statement.encode())
            return cursor.fetchall() if cursor.description else []

    def tail_of_log(self) -> str:
        try:
            return self.log.read_text()[-3000:]
        except OSError:
            return ""


@dataclass
class Cluster:
    primary: Node
    replica: Node

    def pause_replay(self) -> None:
        self.replica.query("SELECT pg_wal_replay_pause()")
        deadline = time.monotonic() + 10
        while self.replica.query("SELECT pg_get_wal_replay_pause_state()")[0][0] != "paused":
            assert time.monotonic() < deadline, "the replica did not pause its replay"
            time.sleep(0.02)

    def resume_replay(self) -> None:
        self.replica.query("SELECT pg_wal_replay_resume()")

    def wait_until_replayed(self, timeout: float = 30) -> None:
        """Until the replica has replayed everything the primary has written so far."""
        target = self.primary.query("SELECT pg_current_wal_lsn()")[0][0]
        deadline = time.monotonic() + timeout
        while True:
            replayed = self.replica.query(f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn")[
                0
            ][0]
            if replayed:
                return
            assert time.monotonic() < deadline, "the replica did not catch up"
            time.sleep(0.05)


@contextmanager
def streaming_cluster(database: str = "freshroots") -> Iterator[Cluster]:
    """A primary with `database` created, and a hot-standby replica streaming from it."""
    root = Path(tempfile.mkdtemp(prefix="freshroots-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, USER)
    primary = Node("primary", root / "primary", free_port(), root / "primary.log")
    replica = Node("replica", root / "replica", free_port(), root / "replica.log")
    started: list[Node] = []
    try:
        _run(str(bindir() / "initdb"), "-D", str(primary.data_dir), "-U", USER,
             "--auth=trust", "--no-sync", "-E", "UTF8")  # fmt: skip
        with (primary.data_dir / "postgresql.conf").open("a") as conf:
            # Speed for a throwaway cluster; replication itself is the default setup
            # (wal_level=replica, max_wal_senders=10, hot_standby=on).
            conf.write("fsync = off\nfull_page_writes = off\nsynchronous_commit = off\n")
        primary.start()
        started.append(primary)
        primary.query(f'CREATE DATABASE "{database}"')
        _run(str(bindir() / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port),
             "-U", USER, "-D", str(replica.data_dir), "-R", "-X", "stream",
             "-C", "-S", "replica_1", "--checkpoint=fast")  # fmt: skip
        with (replica.data_dir / "postgresql.conf").open("a") as conf:
            # Queries on the replica hold back vacuum on the primary rather than being
            # cancelled by the replay of its cleanup.
            conf.write("hot_standby_feedback = on\n")
        replica.start()
        started.append(replica)
        cluster = Cluster(primary, replica)
        cluster.wait_until_replayed()
        yield cluster
    except Exception:
        for node in (primary, replica):
            print(f"--- {node.name} log ---\n{node.tail_of_log()}")
        raise
    finally:
        for node in reversed(started):
            if node.running():
                node.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
