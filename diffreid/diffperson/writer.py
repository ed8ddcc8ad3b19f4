"""Write a Diff-Person dataset: Market-layout images, a disjoint pid space, and a per-identity manifest.

Layout of ``out_dir``::

    bounding_box_train/{pid:04d}_c{cam}s{seq}_{index:06d}_00.jpg   kept generated images (+ copied sources)
    dropped/{same name}                                            generated images the filter dropped
    manifest/part-{pid:06d}-s{seq}.parquet                         one committed chunk of one identity
    manifest/ident-{pid:06d}.json                                  source image paths + free info per identity
    manifest.parquet, identities.json                              merged views, rebuilt by ``close()``
    pid_map.json                                                   (source_dataset, source_pid) <-> pid
    skipped.json                                                   identities skipped by the builder, with reason
    diffperson.json                                                layout settings (format, generated camera)

Names: ``cam`` is ``generated_cam`` (default 9) for every generated image, so they never share a camera
with real ones; copied source images keep their own camera (camid + 1). ``seq`` is the chunk number + 1
(one ``add`` call per identity is chunk 0 → ``s1``), ``index`` runs within the chunk.
Dropped images are written too, outside the Market folders, so the report can show them.

Crash safety: a chunk is marked ``manifest/pending-…`` while its images are written and committed by its part
file, written last (atomically); the mark is then removed. Re-adding a committed chunk is a no-op; a chunk
still marked pending first deletes what the crashed attempt left.
Several processes may ``add`` different identities at once if the identities were registered up front with
``register_identities`` (the pid map is then only read); ``skip`` and ``close()`` belong to one process
(the driver), ``close()`` once at the end.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from diffreid.config import ConfigError, StageConfig
from diffreid.data.types import DatasetError
from diffreid.io import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text

MARKET_DIR = "bounding_box_train"
DROPPED_DIR = "dropped"
PARTS_DIR = "manifest"
MANIFEST = "manifest.parquet"
IDENTITIES = "identities.json"
PID_MAP = "pid_map.json"
SKIPPED = "skipped.json"
META = "diffperson.json"
FORMAT_VERSION = 1
PROVENANCE = ("prompt", "seed", "adapter", "base_model", "scheduler", "steps", "guidance")
REQUIRED_COLUMNS = ("file", "pid", "camid", "source_dataset", "source_pid", "origin", *PROVENANCE, "kept", "sha256")
FILTER_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

PidKey = tuple[str, int]


class WriterConfig(StageConfig):
    image_format: Literal["jpg", "png"] = Field(
        "jpg", description="JPEG keeps a 777K-image dataset small; PNG for lossless experiments")
    jpeg_quality: int = Field(95, ge=1, le=100, description="high enough that re-encoding artefacts stay invisible")
    generated_cam: int = Field(
        9, ge=1, le=9, description="camera number (1-based, as in names) that marks generated images; one digit "
        "because common Market parsers read `c(\\d)`; 9 is unused by Market-1501 (c1-c6) and CUHK03 (c1-c2)")
    keep_dropped: bool = Field(True, description="write dropped images to dropped/ so the report can show them")
    filter_thresholds: dict[str, float] = Field(
        default_factory=dict, description="recorded for the report's histograms; the keep decision is the caller's")


def market_name(pid: int, cam: int, seq: int, index: int, ext: str) -> str:
    """Market-1501 file name; ``cam`` is 1-based as in Market names."""
    return f"{pid:04d}_c{cam}s{seq}_{index:06d}_00.{ext}"


def _key(source_dataset: str, source_pid: int) -> PidKey:
    if not isinstance(source_dataset, str) or not source_dataset:
        raise ValueError(f"source_dataset must be a non-empty string, got {source_dataset!r}")
    if isinstance(source_pid, bool) or not isinstance(source_pid, (int, np.integer)):
        raise ValueError(f"source_pid must be an integer, got {source_pid!r} for dataset {source_dataset!r}")
    return source_dataset, int(source_pid)


class PidMapper:
    """(source_dataset, source_pid) → one disjoint pid space 1..N, saved atomically as ``pid_map.json``.

    An existing map is loaded and only ever extended: pids once assigned never change."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._pids: dict[PidKey, int] = {}
        if self.path.exists():
            self._pids = self._load(self.path)

    @staticmethod
    def _load(path: Path) -> dict[PidKey, int]:
        try:
            entries = json.loads(path.read_text())["entries"]
            pids = {_key(e["source_dataset"], e["source_pid"]): int(e["pid"]) for e in entries}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DatasetError(f"{path}: unreadable pid map ({err}); expected JSON "
                               '{"entries": [{"pid": 1, "source_dataset": "...", "source_pid": 2}, ...]}') from None
        if sorted(pids.values()) != list(range(1, len(pids) + 1)):
            raise DatasetError(f"{path}: pids must be exactly 1..{len(pids)} with no repeats")
        return pids

    def __len__(self) -> int:
        return len(self._pids)

    def get(self, source_dataset: str, source_pid: int) -> int | None:
        return self._pids.get(_key(source_dataset, source_pid))

    def pid(self, source_dataset: str, source_pid: int) -> int:
        """The pid of a source identity, assigning (and saving) the next free one if it is new."""
        return self.extend([(source_dataset, source_pid)])[0]

    def extend(self, keys: Iterable[tuple[str, int]]) -> list[int]:
        """Pids for ``keys``; new keys get the next pids in sorted key order (deterministic for a given set)."""
        keys = [_key(*k) for k in keys]
        new = sorted({k for k in keys if k not in self._pids})
        for k in new:
            self._pids[k] = len(self._pids) + 1
        if new:
            self.save()
        return [self._pids[k] for k in keys]

    def items(self) -> list[tuple[PidKey, int]]:
        return sorted(self._pids.items(), key=lambda kv: kv[1])

    def save(self) -> None:
        entries = [{"pid": pid, "source_dataset": ds, "source_pid": spid} for (ds, spid), pid in self.items()]
        atomic_write_json(self.path, {"version": FORMAT_VERSION, "entries": entries})


def _as_dict(record: Any) -> dict[str, Any]:
    if isinstance(record, Mapping):
        return dict(record)
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return dataclasses.asdict(record)
    if hasattr(record, "model_dump"):
        return record.model_dump()
    raise TypeError(f"a provenance record must be a dict, dataclass or pydantic model, got {type(record).__name__}")


def _to_pil(image: Any):
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a uint8 numpy array, got {type(image).__name__}")
    return image if image.mode in ("RGB", "L") else image.convert("RGB")


class DiffPersonWriter:
    """Appends identities to a Diff-Person folder; see the module docstring for layout and guarantees."""

    def __init__(self, out_dir: str | Path, config: WriterConfig | None = None):
        self.root = Path(out_dir)
        self.config = config or WriterConfig()
        self.root.mkdir(parents=True, exist_ok=True)
        self._check_meta()
        self.pids = PidMapper(self.root / PID_MAP)
        if not self.pids.path.exists():
            self.pids.save()
        self.ext = self.config.image_format

    # -- setup -----------------------------------------------------------------------------------------
    def _check_meta(self) -> None:
        meta_path = self.root / META
        layout = {"format_version": FORMAT_VERSION, "image_format": self.config.image_format,
                  "generated_cam": self.config.generated_cam}
        if meta_path.exists():
            old = json.loads(meta_path.read_text())
            for field, value in layout.items():
                if old.get(field) != value:
                    raise ConfigError(f"{meta_path}: existing dataset has {field}={old.get(field)!r} but the writer "
                                      f"config says {value!r}; use the same value or a new output folder")
        atomic_write_json(meta_path, {**layout, "jpeg_quality": self.config.jpeg_quality,
                                      "keep_dropped": self.config.keep_dropped,
                                      "filter_thresholds": self.config.filter_thresholds})

    def register_identities(self, keys: Iterable[tuple[str, int]]) -> list[int]:
        """Assign pids to every identity of a build up front (sorted, so the numbering is deterministic)."""
        return self.pids.extend(keys)

    def _part(self, pid: int, seq: int) -> Path:
        return self.root / PARTS_DIR / f"part-{pid:06d}-s{seq}.parquet"

    def has_identity(self, pid_key: tuple[str, int], chunk: int = 0) -> bool:
        pid = self.pids.get(*pid_key)
        return pid is not None and self._part(pid, chunk + 1).exists()

    # -- writing ---------------------------------------------------------------------------------------
    def _encode(self, image: Any) -> bytes:
        buf = io.BytesIO()
        image = _to_pil(image)
        if self.ext == "jpg":
            image.save(buf, format="JPEG", quality=self.config.jpeg_quality)
        else:
            image.save(buf, format="PNG")
        return buf.getvalue()

    def _pending(self, pid: int, seq: int) -> Path:
        return self.root / PARTS_DIR / f"pending-{pid:06d}-s{seq}"

    def _begin(self, pid: int, cams: Iterable[int], seq: int) -> None:
        """Mark a chunk as being written; if a crashed attempt left the mark, delete that attempt's files first
        (the folder is scanned only then, so a normal build never lists its image folders)."""
        pending = self._pending(pid, seq)
        if pending.exists():
            prefixes = tuple(f"{pid:04d}_c{cam}s{seq}_" for cam in cams)
            for folder in (MARKET_DIR, DROPPED_DIR):
                d = self.root / folder
                if d.is_dir():
                    for f in d.iterdir():
                        if f.name.lstrip(".").startswith(prefixes):  # temp files are ".<name>.<random>.tmp"
                            f.unlink()
        atomic_write_text(pending, "")

    def _commit(self, pid: int, seq: int, rows: list[dict[str, Any]]) -> None:
        import pandas as pd

        with atomic_path(self._part(pid, seq)) as tmp:
            pd.DataFrame(rows).to_parquet(tmp, index=False)
        self._pending(pid, seq).unlink()

    def _write_ident(self, pid: int, key: PidKey, source_images: Sequence[str] | None, info: dict | None) -> None:
        path = self.root / PARTS_DIR / f"ident-{pid:06d}.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        atomic_write_json(path, {
            "pid": pid, "source_dataset": key[0], "source_pid": key[1],
            "source_images": [str(p) for p in source_images] if source_images is not None
            else old.get("source_images", []),
            "info": {**old.get("info", {}), **(info or {})},
        })

    def add(self, pid_key: tuple[str, int], images: Sequence[Any], records: Sequence[Any],
            scores: Mapping[str, Sequence[float]], kept: Sequence[bool], *, chunk: int = 0,
            source_images: Sequence[str] | None = None, info: dict | None = None) -> int:
        """Write one identity's generated images (one chunk of them) and commit their manifest rows.

        ``records``: one provenance record per image with at least the keys in ``PROVENANCE``; other scalar
        keys become extra columns. ``scores``: filter name → one float per image (column ``score_<name>``).
        ``kept``: the filter decision per image. Returns the number of rows written (0: already committed)."""
        key = _key(*pid_key)
        n = len(images)
        if len(records) != n or len(kept) != n:
            raise ValueError(f"identity {key}: {n} images but {len(records)} records and {len(kept)} kept flags")
        for name, values in scores.items():
            if not FILTER_NAME.match(name):
                raise ValueError(f"filter name {name!r}: expected lowercase letters, digits and _")
            if len(values) != n:
                raise ValueError(f"identity {key}: filter {name!r} has {len(values)} scores for {n} images")
        if chunk < 0:
            raise ValueError(f"chunk must be >= 0, got {chunk}")
        rows_in = [_as_dict(r) for r in records]
        for i, r in enumerate(rows_in):
            missing = [k for k in PROVENANCE if k not in r]
            if missing:
                raise ValueError(f"identity {key}: record {i} lacks {', '.join(missing)} (required: {PROVENANCE})")

        pid = self.pids.pid(*key)
        seq = chunk + 1
        if self._part(pid, seq).exists():
            return 0
        cam = self.config.generated_cam
        self._begin(pid, [cam], seq)
        self._write_ident(pid, key, source_images, info)
        rows = []
        for i, (image, rec, keep) in enumerate(zip(images, rows_in, kept)):
            keep = bool(keep)
            folder = MARKET_DIR if keep else DROPPED_DIR
            rel = f"{folder}/{market_name(pid, cam, seq, i, self.ext)}"
            sha = ""
            if keep or self.config.keep_dropped:
                data = self._encode(image)
                atomic_write_bytes(self.root / rel, data)
                sha = hashlib.sha256(data).hexdigest()
            else:
                rel = ""
            row = {
                "file": rel, "pid": pid, "camid": cam - 1, "seq": seq, "index": i,
                "source_dataset": key[0], "source_pid": key[1], "origin": "generated",
                **{k: rec[k] for k in PROVENANCE},
                **{f"score_{name}": float(values[i]) for name, values in scores.items()},
                "kept": keep, "sha256": sha,
            }
            # extra scalar provenance (e.g. negative_prompt) becomes columns; it never overrides ours
            row.update({k: v for k, v in rec.items() if k not in row and np.isscalar(v)})
            rows.append(row)
        self._commit(pid, seq, rows)
        return len(rows)

    def add_source_images(self, pid_key: tuple[str, int], records: Sequence[Any]) -> int:
        """Copy an identity's real images (``ImageRecord``-like: path, camid 0-based) into the Market folder,
        keeping their own cameras. Committed as chunk ``s0``; a no-op when already committed."""
        key = _key(*pid_key)
        pid = self.pids.pid(*key)
        if self._part(pid, 0).exists():
            return 0
        cams = sorted({int(r.camid) + 1 for r in records})
        if self.config.generated_cam in cams:
            raise ConfigError(f"source identity {key} has camera c{self.config.generated_cam}, the camera reserved "
                              "for generated images; set writer generated_cam to a camera the source lacks")
        self._begin(pid, cams, 0)
        rows = []
        for i, rec in enumerate(records):
            src = Path(rec.path)
            if not src.is_file():
                raise DatasetError(f"source image {src} (identity {key}) does not exist")
            rel = f"{MARKET_DIR}/{market_name(pid, int(rec.camid) + 1, 0, i, self.ext)}"
            if src.suffix.lower().lstrip(".").replace("jpeg", "jpg") == self.ext:
                data = src.read_bytes()
            else:
                from PIL import Image

                with Image.open(src) as im:
                    data = self._encode(im)
            atomic_write_bytes(self.root / rel, data)
            rows.append({"file": rel, "pid": pid, "camid": int(rec.camid), "seq": 0, "index": i,
                         "source_dataset": key[0], "source_pid": key[1], "origin": "source",
                         "prompt": "", "seed": -1, "adapter": "", "base_model": "", "scheduler": "",
                         "steps": 0, "guidance": float("nan"), "kept": True,
                         "sha256": hashlib.sha256(data).hexdigest(), "source_path": str(src)})
        self._commit(pid, 0, rows)
        return len(rows)

    def skip(self, pid_key: tuple[str, int], reason: str) -> None:
        """Record that the builder skipped an identity (listed in the report)."""
        key = _key(*pid_key)
        path = self.root / SKIPPED
        items = json.loads(path.read_text()) if path.exists() else []
        items = [s for s in items if (s["source_dataset"], s["source_pid"]) != key]
        items.append({"source_dataset": key[0], "source_pid": key[1], "reason": str(reason)})
        atomic_write_json(path, items)

    # -- finishing -------------------------------------------------------------------------------------
    def close(self) -> Path:
        """Merge the part files into ``manifest.parquet`` and ``identities.json``; safe to call repeatedly."""
        merge_parts(self.root)
        return self.root / MANIFEST

    def __enter__(self) -> DiffPersonWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def merge_parts(root: str | Path) -> None:
    import pandas as pd

    root = Path(root)
    parts = sorted((root / PARTS_DIR).glob("part-*.parquet"))
    frames = [pd.read_parquet(p) for p in parts]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(REQUIRED_COLUMNS))
    if len(df):
        df = df.sort_values(["pid", "seq", "index"], kind="stable").reset_index(drop=True)
    with atomic_path(root / MANIFEST) as tmp:
        df.to_parquet(tmp, index=False)
    idents = [json.loads(p.read_text()) for p in sorted((root / PARTS_DIR).glob("ident-*.json"))]
    atomic_write_json(root / IDENTITIES, idents)
