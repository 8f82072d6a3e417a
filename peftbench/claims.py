"""Exclusive run claims, so several workers can share one sweep and one output folder.

Before a run, a worker writes who it is into a temporary file and hard-links it to
``<out>/.claims/<run_id>.claim``: the link fails if the claim exists, so exactly one worker
succeeds, and a claim file is never seen empty or half-written (where hard links are not
supported, O_CREAT|O_EXCL is the fallback). The owner touches the file every few seconds (a background thread, so
long preparation and evaluation phases count too) and deletes it once the record is written
or the run is abandoned. A claim whose file has not been touched for ``timeout`` seconds, or
whose owner is a dead process on this host, or that is empty or unreadable (a crash or a full
disk while it was written: no live worker can be behind it), is stale: a taker, holding a short-lived lock file
so that only one taker can win, atomically replaces it with its own claim.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .atomic import write_problem
from .errors import PeftbenchError
from .layout import RunsFolder


class ClaimError(PeftbenchError):
    """A claim could not be written (e.g. a full disk); no claim file was left behind."""


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process (or a nonsense pid): assume alive, let the timeout decide
    return True


def _read(path: Path) -> dict:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _owner_known(info: dict) -> bool:
    """A claim that says who holds it; anything else is the debris of a failed write."""
    return isinstance(info.get("worker"), str) and isinstance(info.get("pid"), int)


@dataclass
class Claim:
    """A held claim: keeps itself alive until released."""

    path: Path
    inode: int
    interval: float

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._beat, name=f"claim {self.path.stem}", daemon=True)
        self._thread.start()

    def _ours(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except FileNotFoundError:
            return False

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            if not self._ours():  # taken over: somebody judged us dead; do not touch their claim
                self.lost = True
                return
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        if self._ours():
            self.path.unlink(missing_ok=True)


class Claims:
    """The claims folder of one output folder, seen by one worker."""

    def __init__(self, out: Path, worker: str | None = None, timeout: float = 600.0):
        self.folder = RunsFolder(out).claims
        self.worker = worker or default_worker_id()
        self.timeout = timeout
        self.interval = max(0.05, min(5.0, timeout / 4))

    def path(self, run_id: str) -> Path:
        return self.folder / f"{run_id}.claim"

    def owner(self, run_id: str) -> dict:
        """What the claim file says (worker, pid, host, time); {} if absent or unreadable."""
        return _read(self.path(run_id))

    def acquire(self, run_id: str) -> Claim | None:
        """Claim a run; None if a live worker holds it. Stale claims are taken over.

        Raises ClaimError (one line, nothing left behind) when the claim cannot be written."""
        path = self.path(run_id)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for _ in range(3):
                try:
                    return Claim(path, self._create(path), self.interval)
                except FileExistsError:
                    taken = self._take_over_stale(path)
                    if taken is not False:
                        return taken  # continue: the claim vanished meanwhile, try to create it again
            return None
        except OSError as exc:
            raise ClaimError(f"cannot write a claim in {self.folder}: {write_problem(exc)}; no claim was left "
                             "behind; then run the same command again") from exc

    def live(self, run_id: str) -> bool:
        """Whether a live worker holds the run: a claim that says who, with a heartbeat within the timeout
        and, on this host, a live process."""
        try:
            return not self._stale(self.path(run_id))
        except FileNotFoundError:
            return False

    def _create(self, path: Path) -> int:
        """A new claim at ``path`` (FileExistsError if there is one), written whole before it appears;
        returns its inode."""
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=self.folder)
        try:
            inode = self._fill(fd)
            try:
                os.link(tmp, path)  # atomic, and fails if the claim exists
            except OSError as exc:
                if isinstance(exc, FileExistsError) or exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):
                    raise
                return self._create_in_place(path)  # a filesystem without hard links
            return inode
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _create_in_place(self, path: Path) -> int:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            return self._fill(fd)
        except BaseException:
            path.unlink(missing_ok=True)  # never leave an empty claim behind
            raise

    def _fill(self, fd: int) -> int:
        """Write who we are into a new claim file; returns its inode (how we recognise it later)."""
        with os.fdopen(fd, "w") as fh:
            json.dump({"worker": self.worker, "pid": os.getpid(), "host": socket.gethostname(),
                       "time": time.time()}, fh)
            fh.flush()  # a full disk fails here, inside the with: the file is closed either way
            return os.fstat(fh.fileno()).st_ino

    def _stale(self, path: Path) -> bool:
        age = time.time() - path.stat().st_mtime
        if age > self.timeout:
            return True
        info = _read(path)
        if not _owner_known(info):
            return True
        pid = info.get("pid")
        return info.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid)

    def _take_over_stale(self, path: Path) -> Claim | None | bool:
        """Our claim if ``path`` was stale and we replaced it; None if it is alive or another taker is at
        work; False if it vanished. Takers are serialised by a lock file held for microseconds."""
        lock = path.with_name(f"{path.name}.takeover")
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - lock.stat().st_mtime > self.timeout:  # a taker died holding it
                    lock.unlink()
            return None
        try:
            try:
                if not self._stale(path):
                    return None
            except FileNotFoundError:
                return False
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=self.folder)
            try:
                inode = self._fill(fd)
                os.replace(tmp, path)  # the stale claim is swapped for ours: the path is never absent
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return Claim(path, inode, self.interval)
        finally:
            lock.unlink(missing_ok=True)
