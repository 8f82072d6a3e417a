"""Split checks by content: the same image bytes under two names or with two labels.

The list checks (splits.py) compare paths only; these compare the digests of the images'
bytes that decoding computes anyway. They warn rather than fail: real data sets hold such
images legitimately — dSprites renders a square rotated by 90° as the very same picture
under another orientation label — while in a user's own folders they usually mean a copied
test image or a labelling slip worth a look.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .splits import PROTOCOL_SPLITS, Entry, TaskLists

if TYPE_CHECKING:
    from .images import SplitData

SHOWN = 5  # findings listed per kind; the rest are counted


@dataclass(frozen=True)
class LoadedSplit:
    """A split's entries with the digest of each image's bytes; ``where`` is its list file."""

    where: str
    entries: Sequence[Entry]
    digests: Sequence[str]

    def at(self, i: int) -> str:
        return f"{self.where}:{self.entries[i].line} ({self.entries[i].rel})"


def _summary(what: str, findings: list[str]) -> list[str]:
    if not findings:
        return []
    more = f" ... and {len(findings) - SHOWN} more" if len(findings) > SHOWN else ""
    return [f"{len(findings)} {what}:\n    " + "\n    ".join(findings[:SHOWN]) + more]


def relabelled_within(split: LoadedSplit) -> list[str]:
    """The same image bytes listed again in one split with another label."""
    first: dict[str, int] = {}
    findings = []
    for i, digest in enumerate(split.digests):
        j = first.setdefault(digest, i)
        if j != i and split.entries[j].label != split.entries[i].label:
            findings.append(f"{split.at(j)} label {split.entries[j].label} and {split.at(i)} label "
                            f"{split.entries[i].label}: the same image")
    return _summary("image(s) with two labels in one split", findings)


def shared_across(train: LoadedSplit, held_out: LoadedSplit) -> list[str]:
    """Images of the held-out split whose bytes are also in the training split under another name."""
    in_train: dict[str, int] = {}
    for i, digest in enumerate(train.digests):
        in_train.setdefault(digest, i)
    findings = [f"{held_out.at(i)} is the same image as {train.at(in_train[d])}"
                for i, d in enumerate(held_out.digests)
                if d in in_train and train.entries[in_train[d]].rel != held_out.entries[i].rel]
    return _summary("held-out image(s) also in the training split under another name", findings)


def content_warnings(splits: dict[str, LoadedSplit], pairs: Sequence[tuple[str, str]]) -> list[str]:
    """Findings within every split and across each (training, held-out) pair of the protocols in use."""
    out = [w for split in splits.values() for w in relabelled_within(split)]
    for train, held_out in pairs:
        out += shared_across(splits[train], splits[held_out])
    return out


def task_content_warnings(lists: TaskLists, decoded: dict[str, SplitData], protocols: Iterable[str]) -> list[str]:
    """:func:`content_warnings` for the decoded splits of one task and the protocols that use them."""
    splits = {name: LoadedSplit(lists.where(name), lists.splits[name], data.digests)
              for name, data in decoded.items()}
    return content_warnings(splits, [PROTOCOL_SPLITS[p] for p in sorted(set(protocols))])
