"""One writer per run id: a lock file per run in the results root, with an owner and a lease.

``<root>/_locks/run=<id>.lock`` is created exclusively (``O_CREAT | O_EXCL``, atomic on local and
NFS v3+ file systems) and holds the owner's pid, host and a random token. While the owner works a
daemon thread touches the file every ``lease_s / 4`` seconds. A lock is stale, and is broken by the
next process that wants it, when its file has not been touched for ``lease_s`` seconds (the owner
died or hangs, on any host) or when its owner is on this host and its pid is gone (at once).
Breaking goes through a short-lived ``.break`` file, so two processes that both find the lock stale
cannot both take it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from exitbench.errors import ResultsRootError, RunLockedError

DEFAULT_LEASE_S = 30.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


class RunLock:
    """The lock of one run id; use as a context manager around everything that writes the run."""

    def __init__(self, root: str | os.PathLike, run_id: str, lease_s: float | None = None):
        self.path = Path(root) / "_locks" / f"run={run_id}.lock"
        self.run_id = run_id
        self.lease_s = float(os.environ.get("EXITBENCH_LOCK_LEASE_S", lease_s or DEFAULT_LEASE_S))
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading a lock ---------------------------------------------------------------------------
    def owner(self) -> dict | None:
        """The current owner's record (pid, host, token, since), or None when unlocked."""
        try:
            return json.loads(self.path.read_text() or "{}")
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written, or garbage: judged by its age alone

    def _is_stale(self, owner: dict) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        if age > self.lease_s:
            return True
        pid, host = owner.get("pid"), owner.get("host")
        return host == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid)

    # -- taking and giving back -------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the lock, breaking a stale one; raise RunLockedError when a live process holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResultsRootError(f"cannot create {self.path.parent}: {exc.strerror}") from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "token": self.token,
                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.owner()
                if owner is None:
                    continue  # released meanwhile: try again
                if not self._is_stale(owner):
                    raise RunLockedError(
                        f"run {self.run_id} is being recorded by pid {owner.get('pid', '?')} on host"
                        f" {owner.get('host', '?')} (since {owner.get('since', '?')}); wait for it to"
                        f" finish, then run the same command again (lock: {self.path})") from None
                self._break(owner)
                continue
            except OSError as exc:
                raise ResultsRootError(f"cannot create the run lock {self.path}: {exc.strerror}") from None
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(record))
            self._thread = threading.Thread(target=self._heartbeat, name=f"lock-{self.run_id}", daemon=True)
            self._thread.start()
            return
        raise RunLockedError(f"could not take the lock of run {self.run_id} ({self.path}): it keeps changing hands")

    def _break(self, stale: dict) -> None:
        """Remove a stale lock, unless someone else is breaking it or it changed hands meanwhile."""
        breaker = self.path.with_suffix(".break")
        try:
            fd = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:  # a breaker that died while breaking: its file is old
                if time.time() - breaker.stat().st_mtime > 10:
                    breaker.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            time.sleep(0.05)
            return
        os.close(fd)
        try:
            now = self.owner()
            if now is not None and now.get("token") == stale.get("token") and self._is_stale(now):
                self.path.unlink(missing_ok=True)
        finally:
            breaker.unlink(missing_ok=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                os.utime(self.path)
            except OSError:
                pass  # a broken lock: the owner finds out when it releases

    def release(self) -> None:
        """Give the lock back (only if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        owner = self.owner()
        if owner and owner.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def held(self) -> bool:
        """True while this object holds the lock."""
        owner = self.owner()
        return bool(owner) and owner.get("token") == self.token

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_locked(root: str | os.PathLike, run_id: str) -> bool:
    """True when a live (not stale) lock is held on the run."""
    lock = RunLock(root, run_id)
    owner = lock.owner()
    return owner is not None and not lock._is_stale(owner)
