"""One run per output directory: a lease file that a second concurrent run refuses to share.

Two runs writing one directory would both write the same ids (nothing in a batch's file name says
which run made it) and each would delete the other's partial files on start-up. So a run first
takes `out_dir/.vf3d-lease.json` (dot-prefixed: shard readers skip it):

    {"host": ..., "pid": ..., "started": ISO time, "heartbeat": unix time, "token": ..., "command": ...}

- Taking it is atomic: the content is written to a private file and hard-linked to the lease name,
  which fails when a lease exists (atomic on local filesystems and NFS alike), so no reader sees a
  half-written lease.
- While the run lasts a daemon thread rewrites `heartbeat` every `heartbeat_seconds`.
- A lease is stale when its holder is provably gone: on this host its pid no longer runs (or now
  belongs to a process started after the lease); on another host its heartbeat is older than
  `stale_after_seconds`. A stale lease is taken over with a log line; a live one makes the run
  refuse with `LeaseHeldError` naming the holder.
- Release on exit removes the file if it is still ours.

On an object store (`--out s3://...`, `gs://...`) there are no hard links, and pyarrow cannot send
a conditional write, so taking the lease is "check, write, verify": the run checks that no lease
exists, publishes its own (an atomic single-object write), waits `REMOTE_SETTLE_SECONDS` and reads
it back. S3 and GCS are strongly consistent (a read after a write sees the last write), so when
two runs race, the later write wins and the earlier run, reading back a token that is not its
own, refuses. Two runs that both check before either writes and write more than
`REMOTE_SETTLE_SECONDS` apart could both pass; that needs a start-up stalled for seconds between
two requests. Staleness, heartbeats and release work as they do locally.

This module imports no ray.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vf3d import storage
from vf3d.atomic import write_json_atomic
from vf3d.config import ConfigError
from vf3d.synthesis.config import LeaseConfig

LEASE_NAME = ".vf3d-lease.json"
LEASE_PARTIAL_SUFFIX = ".tmp"
"""Suffix of the lease's own partial files, which must not look like the partial files that
`vf3d.data.shards.remove_partials` deletes from the same directory while the lease is held."""
REMOTE_SETTLE_SECONDS = 2.0
"""On an object store: how long a run waits between writing its lease and reading it back (see
the module docstring)."""


class LeaseHeldError(ConfigError):
    """Another live run holds the output directory."""


def _process_started(pid: int) -> float | None:
    """Start time (unix seconds) of a live process, or None when there is no such process."""
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # no psutil, or NoSuchProcess / ZombieProcess / AccessDenied: ask the kernel
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return 0.0  # alive, start time unknown


class OutputLease:
    """The lease on one output directory; a context manager (`with OutputLease(...):`).

    Args:
        out_dir: the output directory (must exist).
        config: heartbeat period and staleness timeout.
        command: what holds it (shown to a refused run), e.g. "synthesize".
        log: where the takeover line goes.
    """

    def __init__(self, out_dir: str | os.PathLike, config: LeaseConfig, command: str = "vf3d", log: Callable[[str], None] = print):
        self.out_dir = storage.local_or_uri(out_dir)
        self.remote = storage.is_uri(out_dir)
        self.path = storage.join(out_dir, LEASE_NAME)
        self.config = config
        self.command = command
        self.log = log
        self.token = uuid.uuid4().hex
        self.lost = False
        """Set when the heartbeat found the lease held by someone else (ours was judged stale)."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._content: dict[str, Any] = {}

    # -- taking and giving back -----------------------------------------------------------------

    def acquire(self) -> OutputLease:
        """Take the lease, taking over a stale one; raise LeaseHeldError when a live run holds it."""
        now = time.time()
        self._content = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process_started": _process_started(os.getpid()),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "heartbeat": now,
            "token": self.token,
            "command": self.command,
            "argv": " ".join(sys.argv)[:500],
        }
        for _ in range(3):
            if self._create():
                self._start_heartbeat()
                return self
            holder = self._read()
            if holder is None:
                continue  # released (or half-replaced) between our attempt and our read: try again
            reason = self._stale_reason(holder)
            if reason is None:
                raise LeaseHeldError(
                    f"{self.out_dir} is in use by another run ({describe(holder)}); wait for it to finish or stop it (a lease whose run is gone is taken over automatically)"
                )
            if self._take_over(holder):
                self.log(f"taking over a stale lease on {self.out_dir}: {describe(holder)}, {reason}")
        raise LeaseHeldError(f"{self.out_dir}: could not take the lease {LEASE_NAME} (it keeps changing hands); is another run starting?")

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        holder = self._read()
        if holder is not None and holder.get("token") == self.token:
            storage.remove(self.path)

    def __enter__(self) -> OutputLease:
        return self.acquire()

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    # -- internals ------------------------------------------------------------------------------

    def _write_private(self, content: dict[str, Any]) -> Path:
        """Write `content` to a private file for `_create` to hard-link as the lease. Not
        `vf3d.atomic`: that renames over an existing file, and taking a lease must fail when one
        exists; the link does, atomically."""
        private = self.out_dir / f".{LEASE_NAME}.{self.token}.{uuid.uuid4().hex[:8]}{LEASE_PARTIAL_SUFFIX}"
        private.write_text(json.dumps(content) + "\n")
        return private

    def _create(self) -> bool:
        if self.remote:
            return self._create_remote()
        private = self._write_private(self._content)
        try:
            os.link(private, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            private.unlink(missing_ok=True)

    def _create_remote(self) -> bool:
        """Check, write, verify (see the module docstring)."""
        if storage.exists(self.path):
            return False
        write_json_atomic(self.path, self._content, indent=None, partial_suffix=LEASE_PARTIAL_SUFFIX)
        time.sleep(REMOTE_SETTLE_SECONDS)
        holder = self._read()
        return holder is not None and holder.get("token") == self.token

    def _read(self) -> dict[str, Any] | None:
        if self.remote:
            try:
                return json.loads(storage.read_text(self.path))
            except FileNotFoundError:
                return None
            except ValueError:
                # Writes are atomic there, so this is not a lease being written but something
                # else under its name: treated as held by a silent host, hence stale after the timeout.
                return {"host": "?", "pid": -1, "started": "?", "heartbeat": 0.0, "token": None, "unreadable": True}
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            # Not ours to judge: an unreadable lease is treated as held until its file is old.
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return None
            return {"host": "?", "pid": -1, "started": "?", "heartbeat": time.time() - age, "token": None, "unreadable": True}

    def _stale_reason(self, holder: dict[str, Any]) -> str | None:
        age = time.time() - float(holder.get("heartbeat", 0))
        if holder.get("host") == socket.gethostname() and not holder.get("unreadable"):
            started = _process_started(int(holder.get("pid", -1)))
            if started is None:
                return f"its process {holder.get('pid')} is gone"
            recorded = holder.get("process_started")
            if recorded and started and abs(started - float(recorded)) > 1.0:
                return f"pid {holder.get('pid')} now belongs to another process"
            return None
        if age > self.config.stale_after_seconds:
            return f"no heartbeat for {age:.0f} s (timeout {self.config.stale_after_seconds:.0f} s)"
        return None

    def _take_over(self, holder: dict[str, Any]) -> bool:
        """Move the stale lease aside and create ours; False when someone else got there first."""
        if self.remote:
            current = self._read()
            if current is None or current.get("token") != holder.get("token"):
                return False  # it changed hands since we judged it stale
            storage.remove(self.path)
            return True
        aside = self.out_dir / f".{LEASE_NAME}.stale-{self.token}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        moved = self._read_file(aside)
        if moved is not None and moved.get("token") != holder.get("token"):
            # Between our read and our rename another run took over: put its lease back.
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True  # the caller's loop now creates our lease

    @staticmethod
    def _read_file(path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="vf3d-lease-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.config.heartbeat_seconds):
            holder = self._read()
            if holder is None or holder.get("token") != self.token:
                self.lost = True
                self.log(f"lost the lease on {self.out_dir}: " + (describe(holder) if holder else "its file is gone") + "; stopping")
                return
            self._content["heartbeat"] = time.time()
            # Not the default ".partial" suffix: the run that holds this lease deletes leftover
            # partial files in this directory while the heartbeat may be writing one.
            write_json_atomic(self.path, self._content, indent=None, partial_suffix=LEASE_PARTIAL_SUFFIX)


def describe(holder: dict[str, Any]) -> str:
    """'host H, pid P, started T, heartbeat N s ago' for messages."""
    age = time.time() - float(holder.get("heartbeat", 0))
    command = f"{holder.get('command')} " if holder.get("command") else ""
    return f"{command}host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}, heartbeat {age:.0f} s ago"


def holding_lease(command: str) -> Callable:
    """Decorator for a stage function with `out_dir`, `config` (with a `lease` field) and an
    optional `log` parameter: it runs holding `out_dir`'s lease (creating the directory first)."""
    import functools
    import inspect

    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            out_dir, config = storage.local_or_uri(bound.arguments["out_dir"]), bound.arguments["config"]
            storage.makedirs(out_dir)
            with OutputLease(out_dir, config.lease.validate(), command=command, log=bound.arguments.get("log") or print):
                return function(*args, **kwargs)

        return wrapper

    return decorate
