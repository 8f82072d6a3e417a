"""A failed write says what failed (no space, permission, exists, ...) and what to do, not always "free space"."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from peftbench.atomic import write_problem
from peftbench.claims import ClaimError, Claims
from peftbench.cli import main


@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, "No space left on device: free some space"),
    (errno.EACCES, "Permission denied (/r/x): choose a folder you may write to, or change its permissions"),
    (errno.EEXIST, "File exists (/r/x): remove it or choose another path"),
    (errno.EROFS, "Read-only file system: choose a writable folder"),
    (errno.EIO, "Input/output error (/r/x)"),
])
def test_write_problem_names_the_cause(code, words):
    assert write_problem(OSError(code, os.strerror(code), "/r/x")) == words


def test_a_claim_without_write_permission_says_permission_not_space(tmp_path: Path, monkeypatch):
    def denied(self, path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(Claims, "_create", denied)  # as for a folder of another user (the tests run as root here)
    with pytest.raises(ClaimError) as info:
        Claims(tmp_path / "runs", "me").acquire("r1")
    assert str(info.value) == (f"cannot write a claim in {tmp_path / 'runs' / '.claims'}: Permission denied "
                               f"({tmp_path / 'runs' / '.claims' / 'r1.claim'}): choose a folder you may write to, or "
                               "change its permissions; no claim was left behind; then run the same command again")


def test_a_report_over_a_file_says_what_is_in_the_way(tmp_path: Path, capsys, monkeypatch):
    """The report's folder path runs through a plain file: the message names it, not free space."""
    from peftbench import report

    def blocked(*_args, **_kw):
        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(tmp_path / "file"))

    monkeypatch.setattr(report, "_write_files", blocked)
    monkeypatch.setattr(report, "load_records", lambda _runs: ([{"status": "complete"}], []))
    monkeypatch.setattr(report, "summary_tables", lambda *_a: [])
    monkeypatch.setattr(report, "tuned_tables", lambda _r: [])
    (tmp_path / "runs").mkdir()
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: cannot write the report to {tmp_path / 'out'}: Not a directory ({tmp_path / 'file'}): a "
                   "part of the path is a file, not a folder; choose another path; nothing in it was changed; then "
                   "run `peftbench report` again")
