"""Worker processes for ``[queue] workers = N``: one queue each, spread by the kernel's
``--queue-balance``, sharing the kernel sets the main process owns.

The main process forks them before binding anything, waits until each has bound its
queue, installs the rules, and stops them (SIGTERM) before removing the rules.  Status
merges every worker's tables and counters.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections import Counter
from dataclasses import dataclass

from .status import StatusError, query


class WorkerError(Exception):
    """A worker could not start (the daemon reports it as a runtime failure)."""


@dataclass
class Child:
    index: int
    pid: int
    ready: int  # read end of the pipe the worker reports on
    status: str

    def signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass


def spawn(make_worker, indexes, status_socket: str) -> list[Child]:
    """Fork one worker per index; ``make_worker(index)`` builds, in the child, the object
    whose ``run()`` the worker runs (it reports readiness on its ``ready`` pipe)."""
    children = []
    for index in indexes:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(r)
                worker = make_worker(index)
                worker.ready = w
                code = worker.run()
            except BaseException as exc:  # report why, then leave without cleanup handlers
                try:
                    os.write(w, f"error {exc}\n".encode())
                except OSError:
                    pass
            finally:
                os._exit(code)
        os.close(w)
        children.append(Child(index, pid, r, f"{status_socket}.{index}"))
    return children


def wait_ready(children: list[Child], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    for child in children:
        left = max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([child.ready], [], [], left)
        message = os.read(child.ready, 4096).decode(errors="replace").strip() if ready else "no answer"
        os.close(child.ready)
        if message != "ok":
            raise WorkerError(f"worker {child.index}: {message.removeprefix('error ')}")


def stop_all(children: list[Child], timeout: float = 10.0) -> None:
    for child in children:
        child.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        while True:
            try:
                pid, _ = os.waitpid(child.pid, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                break
            if time.monotonic() > deadline:
                child.signal(signal.SIGKILL)
                os.waitpid(child.pid, 0)
                break
            time.sleep(0.05)
    children.clear()


def merge(snap: dict, children: list[Child]) -> dict:
    """The main process's snapshot with every worker's added in."""
    counters, events = Counter(snap["counters"]), Counter(snap["events"])
    drops, errors = Counter(snap["drops_by_detector"]), Counter(snap["errors_by_detector"])
    snap["workers"] = [{"queue": snap["queue"], "pid": snap["pid"], "packets": snap["counters"].get("packets", 0)}]
    for child in children:
        try:
            other = query(child.status, timeout=2.0)
        except StatusError as exc:
            snap["workers"].append({"queue": None, "error": str(exc)})
            continue
        counters.update(other["counters"])
        events.update(other["events"])
        drops.update(other["drops_by_detector"])
        errors.update(other["errors_by_detector"])
        for table in ("peers", "locks"):
            snap[table]["count"] += other[table]["count"]
            snap[table]["entries"] += other[table]["entries"]
        snap["workers"].append({"queue": other["queue"], "pid": other["pid"],
                                "packets": other["counters"].get("packets", 0)})
    snap.update(counters=dict(counters), events=dict(events), drops_by_detector=dict(drops),
                errors_by_detector=dict(errors))
    return snap
