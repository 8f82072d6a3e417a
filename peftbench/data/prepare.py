"""``peftbench prepare SUITE --from PATH``: unpack (a zip) and verify a data folder, write its manifest.

PATH is a folder in the suite's layout (VTAB-1k: the NOAH folder; FGVC: one folder per data set
with the VPT split files) or a zip of one. A zip is unpacked entry by entry straight into the
target folder (no second copy on disk; an entry already there with the right size is kept, so an
interrupted unpack resumes); an entry whose path leaves the target (``../``, an absolute path, a
drive letter), a symbolic link or any other non-regular entry is refused and named, and nothing
is written outside the target. The folder is then checked task by task and ``MANIFEST.json``
written (data/manifest.py): a task that fails is named with its first problems, the others are
still prepared.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import UsageError
from .limits import DEFAULT_MAX_IMAGE_PIXELS
from .manifest import Progress, VerifyReport, verify_and_write_manifest
from .tasks import suite_tasks

SOURCE_TAGS = {"vtab1k": "noah-jpeg", "fgvc": "fgvc-vpt"}  # the folder route of each suite


@dataclass
class PrepareReport:
    root: Path
    verify: VerifyReport
    refused: list[str] = field(default_factory=list)  # zip entries refused (unsafe), with the reason

    @property
    def ok(self) -> bool:
        return self.verify.ok and not self.refused


def prepare_folder(suite: str, source: Path, out: Path | None = None, tasks: list[str] | None = None,
                   progress: Progress | None = None, threads: int | None = None,
                   max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> PrepareReport:
    """Unpack ``source`` (a zip, into ``out``, default: beside it without ``.zip``) or use it as it is
    (a folder), verify it and write its manifest with the suite's folder-route source tag."""
    if suite not in SOURCE_TAGS:
        raise UsageError(f"prepare {suite}: the folder route exists for {', '.join(SOURCE_TAGS)}")
    specs = suite_tasks(suite)
    source = Path(source)
    refused: list[str] = []
    if source.is_dir():
        if out is not None and Path(out).resolve() != source.resolve():
            raise UsageError(f"--out {out}: only for a zip; a folder ({source}) is verified where it is")
        root = source
    elif source.is_file():
        if not zipfile.is_zipfile(source):
            raise UsageError(f"--from {source}: neither a folder nor a zip file")
        root = Path(out) if out is not None else source.with_suffix("")
        folders = {name for t in specs for name in t.folder_names}
        refused = extract_zip(source, root, folders, progress)
    else:
        raise UsageError(f"--from {source}: no such file or folder")
    report = verify_and_write_manifest(root, SOURCE_TAGS[suite], tasks, suite=suite, progress=progress,
                                       threads=threads, max_pixels=max_pixels)
    return PrepareReport(root=root, verify=report, refused=refused)


_DRIVE = re.compile(r"^[A-Za-z]:")


def _unsafe(name: str) -> str | None:
    """Why a zip entry name may not be written below the target, or None."""
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return "an absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "'..' leaves the target folder"
    return None


def _kind(info: zipfile.ZipInfo) -> str | None:
    """A refused entry kind (symbolic link, device, ...) from the Unix mode bits, or None."""
    mode = info.external_attr >> 16
    if not stat.S_IFMT(mode) or stat.S_ISREG(mode) or stat.S_ISDIR(mode):  # no type bits: a plain file
        return None
    return "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"


def _common_prefix(infos: list[zipfile.ZipInfo], folders: set[str]) -> str:
    """'top/' when every entry lies under one folder that is not itself a task folder (vtab-1k/cifar/...)."""
    tops = {PurePosixPath(i.filename).parts[0] for i in infos if PurePosixPath(i.filename).parts}
    if len(tops) != 1:
        return ""
    top = tops.pop()
    if top in folders or not any(i.filename.startswith(top + "/") and i.filename != top + "/" for i in infos):
        return ""
    return top + "/"


def extract_zip(zip_path: Path, target: Path, folders: set[str], progress: Progress | None = None) -> list[str]:
    """Unpack ``zip_path`` into ``target`` (see the module doc); return the entries refused, with why."""
    zip_path, target = Path(zip_path), Path(target)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UsageError(f"--from {zip_path}: cannot open the zip ({exc})") from exc
    refused: list[str] = []
    with zf:
        infos = zf.infolist()
        prefix = _common_prefix([i for i in infos if not _unsafe(i.filename)], folders)
        target.mkdir(parents=True, exist_ok=True)
        base = target.resolve()

        def done(info: zipfile.ZipInfo) -> bool:  # unpacked by an earlier, interrupted run
            dest = target / (info.filename[len(prefix):] if info.filename.startswith(prefix) else info.filename)
            return dest.is_file() and not dest.is_symlink() and dest.stat().st_size == info.file_size

        need = sum(i.file_size for i in infos if not i.is_dir() and not _unsafe(i.filename) and not done(i))
        free = shutil.disk_usage(target).free
        if need > free:
            raise UsageError(f"--from {zip_path}: unpacking needs {need / 2**30:.1f} GiB more, {target} has "
                             f"{free / 2**30:.1f} GiB free")
        advance = progress(f"unzip {zip_path.name}", len(infos)) if progress else (lambda n: None)
        for info in infos:
            advance(1)
            name = info.filename
            why = _unsafe(name) or _kind(info)
            if why:
                refused.append(f"{zip_path}: entry '{name}': {why}; refused")
                continue
            rel = name[len(prefix):] if name.startswith(prefix) else name
            if not rel.strip("/"):
                continue
            dest = target / rel
            if not dest.resolve().is_relative_to(base):  # e.g. through a symbolic link already in the target
                refused.append(f"{zip_path}: entry '{name}': leaves the target folder {target}; refused")
                continue
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            if done(info):
                continue  # unpacked before (an interrupted run resumes)
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.parent / f".{dest.name}.part"
            try:
                with zf.open(info) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                os.replace(part, dest)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:  # a damaged entry (CRC, truncated zip)
                part.unlink(missing_ok=True)
                refused.append(f"{zip_path}: entry '{name}': cannot be unpacked ({exc})")
    return refused
