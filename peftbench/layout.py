"""The runs folder's layout: every name inside ``--out`` is spelled here and nowhere else.

::

    <out>/<method>/<task>/seed<N>-<run_id>.json   one record per run (records.py writes and finds them)
    <out>/.claims/<run_id>.claim                  which worker runs what (claims.py)
    <out>/.checkpoints/<run_id>.pt                a run's training checkpoint until its record is safe
    <out>/.sweeps/<key>.manifest                  each sweep's planned run ids (status.py)
    <out>/report/                                 the report `peftbench run` writes at the end
    <out>/_local/worker<I>.log                    the local launcher's worker logs
    <out>/_slurm/                                 the Slurm launcher's submitit folder and logs

Hidden folders and the report and launcher folders are never searched for records.
Torch-free: the light commands (report, status) and the launchers use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CLAIMS = ".claims"
CHECKPOINTS = ".checkpoints"
SWEEPS = ".sweeps"
REPORT = "report"
LOCAL_LOGS = "_local"
SLURM_LOGS = "_slurm"
# folders of a runs folder that hold no records (besides hidden ones): the record search skips them
NOT_RECORDS = (REPORT, LOCAL_LOGS, SLURM_LOGS)


@dataclass(frozen=True)
class RunsFolder:
    """The paths of one runs folder (``--out``)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def record(self, method: str, task: str, seed: int, run_id: str) -> Path:
        return self.root / method / task / f"seed{seed}-{run_id}.json"

    @property
    def claims(self) -> Path:
        return self.root / CLAIMS

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    def checkpoint(self, run_id: str) -> Path:
        return self.checkpoints / f"{run_id}.pt"

    @property
    def sweeps(self) -> Path:
        return self.root / SWEEPS

    @property
    def report(self) -> Path:
        return self.root / REPORT

    @property
    def local_logs(self) -> Path:
        return self.root / LOCAL_LOGS

    @property
    def slurm_logs(self) -> Path:
        return self.root / SLURM_LOGS
