"""The lock's promises under contention, proved across processes against real Consul:

- two handlers in two processes take one lock 1,000 times between them: never two holders at
  once (by their own clocks, and by an independent observer of the key's Session), every
  fencing token higher than the last, every fenced CAS write applied;
- a holder frozen with SIGSTOP past its session's TTL loses the lock to the other process,
  and once resumed sees ``lease.lost`` before it writes again; its CAS on the old state fails;
- in a three-server cluster, killing the leader in the middle of handovers never yields two
  holders or a token that goes backwards.

The contenders are tests/support/lock_contender.py; the observer is a thread of this process
making its own blocking queries over plain HTTP, not through the handler.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from harness import ConsulAgent, ConsulCluster, request
from support import clean_env, uniq

pytestmark = pytest.mark.usefixtures("clean_consul_env")

SCRIPT = Path(__file__).resolve().parent / "support" / "lock_contender.py"


class Contender:
    """One lock_contender.py process: its JSON lines, in order, as they come."""

    def __init__(self, mode: str, agent: ConsulAgent, tmp_path: Path, **options: Any) -> None:
        # -P: the script's directory (tests/support, whose secrets.py would shadow the
        # standard library's) is not put on sys.path.
        args = [sys.executable, "-P", str(SCRIPT), mode, "--host", agent.host]
        args += ["--port", str(agent.port)]
        for name, value in options.items():
            args += [f"--{name.replace('_', '-')}", str(value)]
        self.stderr_path = tmp_path / f"contender-{uniq()}.log"
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=clean_env(),
        )
        self.lines: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            self.lines.append(event)
            self._queue.put(event)
        self._queue.put(None)

    def expect(self, *events: str, timeout: float) -> dict[str, Any]:
        """The next line whose event is one of ``events`` (others are kept in ``lines``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self._queue.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                raise AssertionError(f"no {events} within {timeout}s: {self.tail()}") from None
            if event is None:
                raise AssertionError(f"exited before {events}: {self.tail()}")
            if event["event"] in events:
                return event

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def tail(self) -> str:
        return f"{self.lines[-3:]} / stderr: {self.stderr_path.read_text()[-2000:]}"

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self._stderr.close()


class Observer(threading.Thread):
    """Follows the lock key with its own blocking queries; records each answer's Session,
    ModifyIndex and LockIndex with the window [sent, received] in which it was true."""

    def __init__(self, addr: str, key: str) -> None:
        super().__init__(daemon=True)
        self.addr, self.key = addr, key
        self.seen: list[tuple[float, float, str | None, int, int]] = []
        self.errors = 0
        self._halt = threading.Event()

    def run(self) -> None:
        index = 0
        while not self._halt.is_set():
            sent = time.monotonic()
            try:
                resp = request(
                    self.addr, "GET", f"/v1/kv/{self.key}?index={index}&wait=2s", timeout=10
                )
            except OSError:
                self.errors += 1
                time.sleep(0.05)
                continue
            received = time.monotonic()
            if resp.status == 200:
                entry = resp.json()[0]
                state = (entry.get("Session"), entry["ModifyIndex"], entry["LockIndex"])
                self.seen.append((sent, received, *state))
            elif resp.status != 404:
                self.errors += 1
                time.sleep(0.05)
                index = 0
                continue
            returned = int(resp.headers.get("X-Consul-Index", "0"))
            index = 0 if returned < index else returned

    def stop(self) -> None:
        self._halt.set()
        self.join(15)


def check_rounds(
    rounds: list[dict[str, Any]],
    observer: Observer,
    failed: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    """The invariants; returns figures for the report. ``failed`` are rounds that held the
    lock and then failed: their holders believed they held it until they failed."""
    believed = [r for r in rounds if not r["lost"]] + [f for f in failed if "session" in f]
    held = sorted(believed, key=lambda r: r["start"])
    # 1. By the holders' own clocks (one CLOCK_MONOTONIC): no two held at once.
    for before, after in itertools.pairwise(held):
        assert after["start"] >= before["end"], f"two holders at once: {before} / {after}"
    # 2. Fencing tokens strictly increase in the order the lock was held.
    tokens = [r["token"] for r in held]
    assert all(a < b for a, b in itertools.pairwise(tokens)), "a token went backwards"
    # 3. Every fenced write found a lower token and (unless the lock was lost) applied.
    assert all(r["stored"] < r["token"] for r in rounds)
    assert all(r["applied"] for r in rounds if not r["lost"])
    # 4. The observer: each Session it saw is a holder whose token is the key's ModifyIndex
    #    then, and no other holder was inside its round for the whole window of that answer.
    #    A session no holder reported is one whose lock attempt had an unknown outcome and
    #    whose holder never believed it held the key (it destroyed the session).
    by_session = {r["session"]: r for r in held}
    sessions_seen, unknown = set(), set()
    lock_indexes = []
    for sent, received, session, modify_index, lock_index in observer.seen:
        if not session:
            continue
        owner = by_session.get(session)
        if owner is None:
            unknown.add(session)
        else:
            assert modify_index == owner["token"], (modify_index, owner)
        sessions_seen.add(session)
        lock_indexes.append(lock_index)
        for other in held:
            if other["session"] != session:
                assert not (other["start"] <= sent and other["end"] >= received), (
                    f"observer saw {session} while {other['session']} held it: {other}"
                )
    assert lock_indexes == sorted(lock_indexes)
    return {"observed_holds": len(sessions_seen - unknown), "unreported_sessions": len(unknown)}


def run_rounds(contenders: list[Contender], timeout: float) -> list[dict[str, Any]]:
    for contender in contenders:
        contender.expect("ready", timeout=30)
    for contender in contenders:
        contender.send("go")
    for contender in contenders:
        contender.expect("done", timeout=timeout)
    return [line | {"pid": c.proc.pid} for c in contenders for line in c.lines]


def test_two_processes_contend_for_one_lock_over_1000_rounds(
    consul_agent: ConsulAgent, tmp_path: Path
) -> None:
    lock, resource = f"{uniq('contend')}/lock", f"{uniq('contend')}/resource"
    observer = Observer(consul_agent.http_addr, lock)
    observer.start()
    contenders = [
        Contender("rounds", consul_agent, tmp_path, lock=lock, resource=resource, rounds=500)
        for _ in range(2)
    ]
    started = time.monotonic()
    try:
        lines = run_rounds(contenders, timeout=900)
    finally:
        observer.stop()
        for contender in contenders:
            contender.close()
    took = time.monotonic() - started
    errors = [line for line in lines if line["event"] == "error"]
    rounds = [line for line in lines if line["event"] == "round"]
    assert errors == []
    assert len(rounds) == 1000
    assert not any(r["lost"] for r in rounds)
    figures = check_rounds(rounds, observer)
    assert figures["unreported_sessions"] == 0
    by_start = sorted(rounds, key=lambda r: r["start"])
    # The resource's history is exactly the sequence of holders: each read its predecessor.
    assert [r["stored"] for r in by_start] == [0] + [r["token"] for r in by_start[:-1]]
    handovers = sum(1 for a, b in itertools.pairwise(by_start) if a["pid"] != b["pid"])
    assert handovers >= 20, "the two processes hardly contended"
    stored = request(consul_agent.http_addr, "GET", f"/v1/kv/{resource}?raw").body
    assert int(stored) == by_start[-1]["token"]
    print(
        f"\ncontention: 1000 rounds in {took:.1f}s ({1000 / took:.0f}/s), {handovers} handovers "
        f"between processes, the observer saw {figures['observed_holds']} holds "
        f"({len(observer.seen)} answers)"
    )


def test_a_holder_frozen_past_its_ttl_loses_the_lock_and_sees_lost_before_writing(
    consul_agent: ConsulAgent, tmp_path: Path
) -> None:
    lock, resource = f"{uniq('frozen')}/lock", f"{uniq('frozen')}/resource"
    options = {"lock": lock, "resource": resource, "ttl": "10s", "lock_delay": "1s"}
    holder = Contender("hold", consul_agent, tmp_path, **options)
    other: Contender | None = None
    try:
        first = holder.expect("acquired", timeout=30)
        time.sleep(0.5)  # a few fenced writes while it legitimately holds the lock
        other = Contender("once", consul_agent, tmp_path, wait=120, **options)
        time.sleep(0.5)
        os.kill(holder.proc.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        second = other.expect("acquired", timeout=90)
        wrote = other.expect("wrote", timeout=10)
        frozen_for = time.monotonic() - frozen_at
        os.kill(holder.proc.pid, signal.SIGCONT)
        resumed_at = time.monotonic()
        lost = holder.expect("lost", "write_refused", timeout=10)
        late = holder.expect("late_write", timeout=10)
        other.expect("done", timeout=10)
        holder.expect("done", timeout=10)
    finally:
        holder.close()
        if other is not None:
            other.close()
    # The other process got the lock only after Consul invalidated the frozen session.
    assert frozen_for >= 10.0
    assert second["token"] > first["token"]
    assert (wrote["applied"], wrote["stored"] < wrote["token"]) == (True, True)
    # Resumed, the holder saw lost before its next write, and its late CAS failed.
    assert lost["event"] == "lost", lost
    assert lost["at"] - resumed_at < 1.0
    assert late["applied"] is False
    stored = request(consul_agent.http_addr, "GET", f"/v1/kv/{resource}?raw").body
    assert int(stored) == second["token"]
    print(
        f"\nfrozen holder: frozen {frozen_for:.1f}s, lost seen {lost['at'] - resumed_at:.3f}s "
        f"after resume ({lost['reason']}), late CAS applied={late['applied']}"
    )


def test_killing_the_leader_mid_handover_never_yields_two_holders(
    consul_cluster: ConsulCluster, tmp_path: Path
) -> None:
    leader = consul_cluster.leader()
    followers = [a for a in consul_cluster.running if a is not leader]
    lock, resource = f"{uniq('leader')}/lock", f"{uniq('leader')}/resource"
    observer = Observer(followers[0].http_addr, lock)
    observer.start()
    options = {"lock": lock, "resource": resource, "ttl": "10s", "lock_delay": "1s"}
    tolerant = {"max_errors": 500, "breaker_reset": 1.0, "timeout": 3, "wait": 60}
    contenders = [
        Contender("rounds", agent, tmp_path, rounds=150, **tolerant, **options)
        for agent in followers
    ]
    try:
        for contender in contenders:
            contender.expect("ready", timeout=30)
        for contender in contenders:
            contender.send("go")
        # In the middle of the handovers: wait for some rounds, then kill the leader.
        contenders[0].expect("round", timeout=60)
        time.sleep(1.0)
        killed = consul_cluster.kill_leader()
        killed_at = time.monotonic()
        consul_cluster.wait_for_leader(exclude=killed, timeout=60)
        elected_after = time.monotonic() - killed_at
        for contender in contenders:
            contender.expect("done", timeout=600)
    finally:
        observer.stop()
        for contender in contenders:
            contender.close()
    lines = [line | {"pid": c.proc.pid} for c in contenders for line in c.lines]
    rounds = [line for line in lines if line["event"] == "round"]
    errors = [line for line in lines if line["event"] == "error"]
    assert len(rounds) == 300, errors[-5:]
    figures = check_rounds(rounds, observer, errors)
    # Handovers happened before the leader died and after the new one was elected.
    assert any(r["end"] < killed_at for r in rounds)
    assert any(r["start"] > killed_at + elected_after for r in rounds)
    print(
        f"\nleader loss: new leader after {elected_after:.1f}s; {len(rounds)} rounds held, "
        f"{len(errors)} failed with typed errors ({sorted({e['error'] for e in errors})}), "
        f"{sum(r['lost'] for r in rounds)} lost mid-round, {sum('session' in e for e in errors)} "
        f"failed while held; observer saw {figures['observed_holds']} holds and "
        f"{figures['unreported_sessions']} sessions no contender believed it held"
    )
