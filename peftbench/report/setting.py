"""Which runs are comparable (the ``Setting`` key) and which task columns a table shows (``Layout``)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

from ..data.tasks import BUILTIN_SUITE_MODULES, GROUPS, SUITES, suite_tasks

OTHER_GROUP = "other"


# ----------------------------------------------------------------------------------------------
# the comparability key


@dataclass(frozen=True)
class Setting:
    """What must be equal for two runs to share a table."""

    suite: str | None
    backbone: str | None
    weights: str | None  # the checksum, else the weights string
    img_size: tuple[int, ...]
    protocol: str | None
    epochs: int | None
    precision: str | None
    recipe: str = "shared"  # "official": the authors' per-task settings (a reproduction, never mixed in)
    synthetic: bool = False  # data from `make-synthetic`: random content, timing only
    data_source: str = "unverified"  # data.source: the manifest's tag (noah-jpeg, tfds-png, ...); never mixed
    # what timm built and its inputs' normalisation (records before these were kept: the name as given,
    # no file hash; such a record joins the table that matches it in everything else, see split_settings)
    normalisation: tuple[tuple[float, ...], ...] = ()  # (mean, std)
    checkpoint_sha256: str | None = None  # of the weights file loaded

    LABELS: ClassVar[dict[str, str]] = {"suite": "suite", "backbone": "backbone", "weights": "weights checksum",
              "img_size": "image size", "protocol": "protocol", "epochs": "epochs", "precision": "precision",
              "recipe": "recipe", "synthetic": "synthetic data", "normalisation": "normalisation",
              "checkpoint_sha256": "checkpoint file sha256", "data_source": "data source"}

    def differences(self, other: Setting) -> list[str]:
        return [self.LABELS[f.name] for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]


def setting_of(record: dict) -> Setting:
    bb = record.get("backbone") or {}
    train = (record.get("config") or {}).get("train") or {}
    precision = (record.get("metrics") or {}).get("precision") or train.get("precision")
    return Setting(
        suite=record.get("suite"),
        backbone=bb.get("timm_name") or bb.get("name"),  # resolved: a legacy name sits with what it loaded
        weights=bb.get("checksum") or bb.get("weights"),
        img_size=tuple(bb.get("img_size") or ()),
        protocol=train.get("protocol"),
        epochs=train.get("epochs"),
        precision=None if precision == "auto" else precision,
        recipe=(record.get("config") or {}).get("recipe") or "shared",  # records before recipes: shared
        synthetic=bool((record.get("data") or {}).get("synthetic")),
        data_source=data_source_of(record),
        normalisation=tuple(tuple(bb[k]) for k in ("mean", "std") if bb.get(k)),
        checkpoint_sha256=bb.get("checkpoint_sha256"),
    )


def data_source_of(record: dict) -> str:
    """The record's data source; records written before data provenance count as unverified."""
    return str((record.get("data") or {}).get("source") or "unverified")


def split_settings(records: list[dict]) -> dict[Setting, list[dict]]:
    """Records by setting, largest group first. A run that failed before its precision was
    resolved ('auto'), or a record without a checkpoint file hash, joins the table that matches it
    in everything else, if there is exactly one."""
    groups: dict[Setting, list[dict]] = defaultdict(list)
    pending = []
    for rec in records:
        key = setting_of(rec)
        (pending if key.precision is None or _unhashed(rec) else groups[key]).append(rec)
    for rec in pending:
        key = setting_of(rec)
        loose = ("precision",) * (key.precision is None) + ("checkpoint_sha256",) * _unhashed(rec)
        match = [k for k in groups if k == Setting(**{**asdict(key), **{f: getattr(k, f) for f in loose}})]
        groups[match[0] if len(match) == 1 else key].append(rec)
    order = sorted(groups, key=lambda k: (-sum(r["status"] == "complete" for r in groups[k]), -len(groups[k]),
                                          json.dumps(asdict(k), default=str)))
    return {k: groups[k] for k in order}


def _unhashed(record: dict) -> bool:
    """No checkpoint file hash: a record from before it was recorded, random init, or a cached file not
    found; its weights are still known by their tensor checksum."""
    return (record.get("backbone") or {}).get("checkpoint_sha256") is None


def metric_name(protocol: str | None) -> str:
    return "val_top1" if protocol == "val" else "test_top1"


# ----------------------------------------------------------------------------------------------
# task layout: which columns, in which order, and the denominators of "(n/N)"


@dataclass
class Layout:
    groups: list[tuple[str, list[str]]]  # (group, shown tasks) in suite order
    group_totals: dict[str, int]  # tasks per group in the whole suite
    total: int  # tasks in the whole suite

    @property
    def tasks(self) -> list[str]:
        return [t for _, tasks in self.groups for t in tasks]


def task_layout(suite: str | None, tasks: Iterable[str]) -> Layout:
    """Suite order when the suite is known, else alphabetical; groups natural, specialized,
    structured, then anything else. Denominators count the whole suite when it is known."""
    shown = set(tasks)
    if suite in BUILTIN_SUITE_MODULES:
        suite_tasks(suite)  # a built-in suite defined in its own module registers itself on first use
    if suite in SUITES:
        specs = SUITES[suite]
        extra = sorted(shown - {s.name for s in specs})  # tasks the suite does not know
        order = [s.name for s in specs] + extra
        group_of = {s.name: s.group for s in specs}
        totals = Counter(s.group for s in specs) + Counter({OTHER_GROUP: len(extra)})
    else:
        order = sorted(shown)
        group_of = {s.name: s.group for specs in SUITES.values() for s in specs}
        totals = Counter(group_of.get(t, OTHER_GROUP) for t in shown)
    group_order = [*GROUPS, *sorted({group_of.get(t, OTHER_GROUP) for t in shown} - set(GROUPS))]
    groups = [(g, [t for t in order if t in shown and group_of.get(t, OTHER_GROUP) == g]) for g in group_order]
    groups = [(g, ts) for g, ts in groups if ts]
    return Layout(groups, dict(totals), sum(totals.values()))
