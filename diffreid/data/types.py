"""The one record type and the one dataset type every reader returns and every stage consumes."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

from diffreid.errors import DiffreidError

Modality = Literal["rgb", "ir"]


class DatasetError(DiffreidError, ValueError):
    """A dataset folder or index file is missing or malformed; the message names the path and the expected form."""


@dataclass(frozen=True)
class ImageRecord:
    """One image. ``camid`` is 0-based; ``pid`` is the dataset's own id (0 = distractor, kept in gallery)."""

    path: str
    pid: int
    camid: int
    modality: Modality = "rgb"
    seq: int | None = None
    frame: int | None = None


@dataclass
class ReIDDataset:
    name: str
    root: str
    train: list[ImageRecord] = field(default_factory=list)
    query: list[ImageRecord] = field(default_factory=list)
    gallery: list[ImageRecord] = field(default_factory=list)

    def split(self, name: str) -> list[ImageRecord]:
        if name not in ("train", "query", "gallery"):
            raise ValueError(f"unknown split {name!r}: expected train, query or gallery")
        return getattr(self, name)

    def stats(self) -> dict[str, dict[str, int]]:
        out = {}
        for name in ("train", "query", "gallery"):
            recs = self.split(name)
            out[name] = {
                "images": len(recs),
                "ids": len({r.pid for r in recs}),
                "cams": len({r.camid for r in recs}),
            }
        return out

    def summary(self) -> str:
        rows = [f"{self.name} ({self.root})", f"  {'split':<8}{'ids':>8}{'images':>9}{'cams':>6}"]
        for name, s in self.stats().items():
            rows.append(f"  {name:<8}{s['ids']:>8}{s['images']:>9}{s['cams']:>6}")
        return "\n".join(rows)

    def identity_sequences(self, split: str = "train") -> dict[int, dict[int, list[ImageRecord]]]:
        """pid -> camid -> images ordered by (seq, frame, path): the consecutive same-camera sequences LPE/DI read."""
        groups: dict[int, dict[int, list[ImageRecord]]] = defaultdict(lambda: defaultdict(list))
        for rec in self.split(split):
            groups[rec.pid][rec.camid].append(rec)
        key = lambda r: (r.seq if r.seq is not None else -1, r.frame if r.frame is not None else -1, r.path)
        return {pid: {cam: sorted(recs, key=key) for cam, recs in sorted(cams.items())}
                for pid, cams in sorted(groups.items())}


def relabel(records: list[ImageRecord]) -> tuple[list[ImageRecord], dict[int, int]]:
    """Map pids to 0..K-1 (sorted order) for classification training; returns the records and the mapping."""
    mapping = {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}
    from dataclasses import replace

    return [replace(r, pid=mapping[r.pid]) for r in records], mapping
