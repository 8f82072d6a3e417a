"""The one way peftbench writes a file or a folder: whole or absent, never half-written.

Everything goes through a temporary sibling (same filesystem, so the final ``os.replace`` is
atomic) that is removed again when the writer fails or is interrupted. Records, checkpoints,
reports, decoded-image caches, SHIP's prototype banks and generated suites all use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

UMASK = os.umask(0o022)
os.umask(UMASK)  # read once: the process's umask, for what mkstemp / mkdtemp create private


_REMEDY = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space or raise the quota",
    errno.EACCES: "choose a folder you may write to, or change its permissions",
    errno.EPERM: "choose a folder you may write to, or change its permissions",
    errno.EROFS: "choose a writable folder",
    errno.EEXIST: "remove it or choose another path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "choose another path",
}


_WHOLE_DEVICE = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def write_problem(exc: OSError) -> str:
    """What failed in a write and what to do: the system's words (No space left on device, Permission
    denied, File exists, ...), the path when the error names one, and a remedy."""
    cause = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is not None and exc.errno not in _WHOLE_DEVICE:  # which file, where it is that file's fault
        cause += f" ({exc.filename})"
    remedy = _REMEDY.get(exc.errno or 0)
    return f"{cause}: {remedy}" if remedy else cause


def atomic_write(path: Path, write: Callable[[Path], None], durable: bool = True) -> Path:
    """Write through a temporary file in the same folder, then rename: the file is whole or absent.

    ``write(tmp)`` fills the temporary file (it exists, empty). ``durable`` also fsyncs the file
    before the rename and the folder after it (records and checkpoints must survive a crash;
    a report or a cache can simply be written again).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes files private; results are shared and read by others
    try:
        write(Path(tmp))
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)
    return path


def atomic_folder(path: Path, write: Callable[[Path], None]) -> bool:
    """Fill a temporary sibling folder with ``write(tmp)``, then rename it to ``path``.

    ``path`` may be absent or an empty folder. Returns False, discarding our copy, when another
    writer renamed a non-empty folder into place first (concurrent callers: the first wins).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp makes folders private
    try:
        write(tmp)
        try:
            os.replace(tmp, path)
        except OSError:
            if path.is_dir() and any(path.iterdir()):
                return False
            raise
        return True
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(folder: Path) -> Iterator[Path]:
    """A temporary sibling of ``folder`` to write a set of files into; they move into ``folder`` only
    when the block ends without error (renames on one filesystem: no space needed), else ``folder`` is
    left as it was. Unlike atomic_folder, ``folder`` may hold other files (the user's): they are kept."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        yield stage
        folder.mkdir(exist_ok=True)
        for path in sorted(stage.iterdir()):
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass  # some filesystems do not support fsync on directories
