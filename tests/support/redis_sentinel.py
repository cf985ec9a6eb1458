"""A private Redis Sentinel group for failover tests: a master, one replica and three
sentinels, each a real `redis-server` on a free port, in a temp directory removed at the end.

`sentinel_group(name)` returns only once a failover could really happen: the replica is in
sync with the master, and every sentinel knows the replica and the two other sentinels
(discovered through their hello messages). Before that, killing the master would leave the
sentinels with nobody to promote, or without the quorum to authorise a promotion, and a test
would wait out its timeout for a failover that was never possible.

Every process logs to a file in the temp directory; a setup that times out, and a failed
test that calls `log_tails()`, show the end of each log.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

import redis

from tests.support.live_server import free_port

HOST = "127.0.0.1"
Address = tuple[str, int]

# Sentinel timing: the master is subjectively down after a second of silence; a failover
# that stalls is abandoned (and may be retried) after five.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
# Starting up is quick; sentinel discovery (hello messages every 2 s) takes a few seconds.
READY_SECONDS = 30.0
POLL_SECONDS = 0.1


@dataclass
class RedisNode:
    """One `redis-server` process: a data node (master or replica) or a sentinel."""

    role: str  # what it was started as: "master", "replica" or "sentinel-N"
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def address(self) -> Address:
        return (HOST, self.port)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as error:
            return f"(no log: {error})"
        return "\n".join(text.splitlines()[-lines:])


def ask(port: int, *command: str | int) -> Any:
    """One command to the node on `port`, answered as redis-py parses it (INFO as a dict,
    SENTINEL SLAVES as a list of dicts, an address as a (host, port) tuple). Short timeouts:
    a node that does not answer at once is treated as not (yet) there."""
    client = redis.Redis(
        host=HOST, port=port, socket_timeout=1, socket_connect_timeout=1, decode_responses=True
    )
    try:
        return client.execute_command(*command)  # type: ignore[no-untyped-call]
    finally:
        client.close()


def _answers_ping(node: RedisNode) -> bool:
    return node.running and _answer(node.port, "PING") is True


def _silent(node: RedisNode) -> str:
    return f"{node.role} on port {node.port} does not answer PING"


def _answer(port: int, *command: str | int) -> Any:
    """Like `ask`, but None while the node cannot answer (not started, dead, loading)."""
    try:
        return ask(port, *command)
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
        return None


@dataclass
class SentinelGroup:
    master_name: str
    directory: Path
    data_nodes: list[RedisNode]
    sentinel_nodes: list[RedisNode]
    killed: list[RedisNode] = field(default_factory=list)

    @property
    def sentinels(self) -> str:
        """The sentinels' addresses as REDIS_SENTINELS takes them."""
        return ",".join(f"{host}:{port}" for host, port in self.sentinel_addresses)

    @property
    def sentinel_addresses(self) -> list[Address]:
        return [node.address for node in self.sentinel_nodes]

    @property
    def nodes(self) -> list[RedisNode]:
        return [*self.data_nodes, *self.sentinel_nodes]

    def reported_master(self, sentinel: RedisNode) -> Address | None:
        """Where this sentinel says the master is (None: it does not answer)."""
        answer = _answer(sentinel.port, "SENTINEL GET-MASTER-ADDR-BY-NAME", self.master_name)
        if not answer:
            return None
        host, port = answer
        return (str(host), int(port))

    def master_address(self) -> Address:
        """The master's address, as the first sentinel that answers reports it."""
        for sentinel in self.sentinel_nodes:
            address = self.reported_master(sentinel)
            if address is not None:
                return address
        raise AssertionError(f"no sentinel answers for {self.master_name!r}\n{self.log_tails()}")

    def node_at(self, address: Address) -> RedisNode:
        for node in self.data_nodes:
            if node.address == address:
                return node
        raise AssertionError(f"no data node of this group listens on {address}")

    def wait_until_replicated(self, timeout: float = 10) -> None:
        """Until every replica of the current master holds all it had written when called
        (replication is asynchronous: a crash right after a write may lose it otherwise)."""
        master = self.node_at(self.master_address())
        info = ask(master.port, "INFO", "replication")
        target, replicas = int(info["master_repl_offset"]), int(info["connected_slaves"])
        offsets: list[int] = []

        def caught_up() -> bool:
            answer = _answer(master.port, "INFO", "replication") or {}
            offsets[:] = [
                int(answer.get(f"slave{n}", {}).get("offset", -1)) for n in range(replicas)
            ]
            return all(offset >= target for offset in offsets)

        self._wait(
            caught_up,
            timeout,
            lambda: f"the replicas' offsets {offsets} did not reach the master's {target}",
        )

    def kill_master(self) -> Address:
        """SIGKILL the current master, like a crash (no shutdown, no last replication);
        returns the address it had."""
        address = self.master_address()
        node = self.node_at(address)
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(timeout=10)
        self.killed.append(node)
        return address

    def wait_for_failover(self, old_address: Address, timeout: float = 30) -> Address:
        """The new master's address, once every sentinel reports one other than
        `old_address` (the same one) and that node answers ROLE as a master."""
        seen: dict[int, Address | None] = {}
        role: Any = None
        promoted_address: list[Address] = []

        def promoted() -> bool:
            nonlocal role
            for sentinel in self.sentinel_nodes:
                seen[sentinel.port] = self.reported_master(sentinel)
            reported = set(seen.values())
            if len(reported) != 1 or None in reported or old_address in reported:
                return False
            (address,) = reported
            assert address is not None
            role = _answer(address[1], "ROLE")
            if not role or role[0] != "master":
                return False
            promoted_address.append(address)
            return True

        self._wait(
            promoted,
            timeout,
            lambda: (
                f"no failover from {old_address} within {timeout:g} s: sentinels report "
                f"{seen}, the candidate's ROLE is {role!r}"
            ),
        )
        return promoted_address[-1]

    def log_tails(self, lines: int = 15) -> str:
        return "\n".join(
            f"--- {node.role} (port {node.port}, "
            f"{'running' if node.running else f'exited {node.process.returncode}'}) ---\n"
            f"{node.log_tail(lines)}"
            for node in self.nodes
        )

    def _wait(self, ready: Callable[[], bool], timeout: float, why: Callable[[], str]) -> None:
        """Poll `ready` until it holds; on timeout fail with `why()` and every log's tail."""
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise AssertionError(f"{why()}\n{self.log_tails()}")
            time.sleep(POLL_SECONDS)

    def wait_until_ready(self, timeout: float = READY_SECONDS) -> None:
        """Replica in sync, every sentinel knowing the replica and its two peers."""
        deadline = time.monotonic() + timeout
        master, replica = self.data_nodes
        state: dict[str, Any] = {}

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        for node in self.nodes:
            self._wait(partial(_answers_ping, node), left(), partial(_silent, node))

        def replica_in_sync() -> bool:
            state["master"] = _answer(master.port, "INFO", "replication") or {}
            state["replica"] = _answer(replica.port, "INFO", "replication") or {}
            return bool(
                state["master"].get("connected_slaves") == 1
                and state["replica"].get("master_link_status") == "up"
            )

        self._wait(
            replica_in_sync,
            left(),
            lambda: (
                "the replica did not get in sync: master says "
                f"connected_slaves={state['master'].get('connected_slaves')}, replica says "
                f"master_link_status={state['replica'].get('master_link_status')}"
            ),
        )

        def sentinels_know_everyone() -> bool:
            for sentinel in self.sentinel_nodes:
                replicas = _answer(sentinel.port, "SENTINEL SLAVES", self.master_name) or []
                peers = _answer(sentinel.port, "SENTINEL SENTINELS", self.master_name) or []
                state[sentinel.role] = (len(replicas), len(peers))
                if len(replicas) != 1 or len(peers) != len(self.sentinel_nodes) - 1:
                    return False
            return True

        self._wait(
            sentinels_know_everyone,
            left(),
            lambda: (
                "the sentinels did not discover the replica and each other: "
                + ", ".join(
                    f"{node.role} knows (replicas, other sentinels) = {state.get(node.role)}"
                    for node in self.sentinel_nodes
                )
            ),
        )

    def stop(self) -> None:
        for node in self.nodes:
            if node.running:
                node.process.kill()
            with suppress(subprocess.TimeoutExpired):  # a SIGKILL is not refused
                node.process.wait(timeout=10)


def _start(
    role: str, port: int, arguments: list[str], directory: Path, logs: ExitStack
) -> RedisNode:
    log_path = directory / f"{role}.log"
    log: IO[bytes] = logs.enter_context(log_path.open("wb"))
    process = subprocess.Popen(
        ["redis-server", *arguments],
        cwd=directory,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return RedisNode(role, port, process, log_path)


def _data_node_arguments(port: int, directory: Path) -> list[str]:
    """A Redis without persistence; its own working directory, so the replica's full-sync
    file cannot meet anything of the master's."""
    directory.mkdir()
    return [
        "--port",
        str(port),
        "--bind",
        HOST,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(directory),
    ]


def _sentinel_config(port: int, master_name: str, master_port: int) -> str:
    return "\n".join(
        [
            f"port {port}",
            f"bind {HOST}",
            f"sentinel monitor {master_name} {HOST} {master_port} 2",
            f"sentinel down-after-milliseconds {master_name} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {master_name} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {master_name} 1",
            "",
        ]
    )


@contextmanager
def sentinel_group(master_name: str = "freshroots") -> Iterator[SentinelGroup]:
    """Start the group, wait until a failover is possible, yield it; kill and reap every
    process and remove the temp directory on exit."""
    if shutil.which("redis-server") is None:
        raise AssertionError("redis-server is needed for a Sentinel group")
    directory = Path(tempfile.mkdtemp(prefix="redis-sentinel-"))
    group: SentinelGroup | None = None
    try:
        with ExitStack() as logs:
            master_port, replica_port = free_port(), free_port()
            master = _start(
                "master",
                master_port,
                _data_node_arguments(master_port, directory / "master"),
                directory,
                logs,
            )
            replica = _start(
                "replica",
                replica_port,
                [
                    *_data_node_arguments(replica_port, directory / "replica"),
                    "--replicaof",
                    HOST,
                    str(master_port),
                ],
                directory,
                logs,
            )
            group = SentinelGroup(master_name, directory, [master, replica], [])
            for number in range(1, 4):
                port = free_port()
                # A sentinel rewrites its config file (what it learns, its own id): writable.
                config = directory / f"sentinel-{number}.conf"
                config.write_text(_sentinel_config(port, master_name, master_port))
                group.sentinel_nodes.append(
                    _start(
                        f"sentinel-{number}",
                        port,
                        [str(config), "--sentinel"],
                        directory,
                        logs,
                    )
                )
            group.wait_until_ready()
            yield group
    finally:
        if group is not None:
            group.stop()
        shutil.rmtree(directory, ignore_errors=True)
