"""Write an expanded VI dataset in SYSU-MM01's own layout, so VI-ReID trainers read it unchanged.

Layout of ``out_dir``::

    cam{k}/{pid:04d}/{n:04d}.jpg        the VI dataset's own pid folders (symlinks or copies) + the new pids:
                                        generated IR images in the IR cameras, the source RGB images (and any
                                        generated RGB) in the visible cameras
    exp/train_id.txt, val_id.txt, test_id.txt   the VI dataset's lists; train also lists every new pid kept
    dropped/cam{k}/{pid:04d}/{n:04d}.jpg        generated images the filter dropped
    manifest/part-{pid:06d}-s1.parquet          one identity's committed rows (merged into manifest.parquet)
    manifest/ident-{pid:06d}.json               its source identity and info (merged into identities.json)
    pid_map.json                                new pid <-> (source_dataset, source_pid)

New pids start above the VI dataset's largest id (pid collisions are errors). An identity is written under
a ``manifest/pending-…`` mark and committed by its part file, written last; a re-run skips committed
identities and clears what a crashed attempt left.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from diffreid.data.readers._files import read_id_list
from diffreid.data.types import DatasetError
from diffreid.diffperson.writer import PARTS_DIR, merge_parts
from diffreid.io import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text

CAMERAS = (1, 2, 3, 4, 5, 6)
SPLIT_FILES = ("train_id.txt", "val_id.txt", "test_id.txt")
PID_MAP = "pid_map.json"
DROPPED_DIR = "dropped"
MAX_PID = 9999  # pid folders are 4 digits


def read_ids(path: str | Path) -> list[int]:
    """Ids of a SYSU ``exp/*_id.txt`` file; a blank file (a split with no ids) gives []."""
    return read_id_list(str(path)) if Path(path).read_text().strip() else []


def existing_ids(base: str | Path) -> dict[int, str]:
    """Every pid a SYSU-style folder uses (in exp lists or as a cam folder) -> where it was first seen."""
    base = Path(base)
    seen: dict[int, str] = {}
    for name in SPLIT_FILES:
        path = base / "exp" / name
        if path.is_file():
            for pid in read_ids(path):
                seen.setdefault(pid, f"exp/{name}")
    for cam in CAMERAS:
        folder = base / f"cam{cam}"
        if folder.is_dir():
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.isdigit():
                        seen.setdefault(int(entry.name), f"cam{cam}/{entry.name}")
    return seen


@dataclass
class Generated:
    """One generated image to write: its SYSU camera (1-based), modality, provenance record and scores."""

    image: Any
    cam: int
    modality: str
    record: dict
    scores: dict[str, float] = field(default_factory=dict)
    kept: bool = True


class SysuExpansionWriter:
    """Writes new identities into a SYSU-style copy of a VI dataset; see the module docstring."""

    def __init__(self, out_dir: str | Path, vi_base: str | Path, *, new_pid_start: int | None = None,
                 link_mode: str = "symlink", jpeg_quality: int = 95, keep_dropped: bool = True):
        self.root = Path(out_dir)
        self.vi_base = Path(vi_base).resolve()
        self.link_mode, self.jpeg_quality, self.keep_dropped = link_mode, jpeg_quality, keep_dropped
        if not (self.vi_base / "exp").is_dir():
            raise DatasetError(f"VI dataset split folder not found: {self.vi_base / 'exp'} (expected a SYSU-MM01 "
                               "folder with exp/train_id.txt, val_id.txt, test_id.txt and cam1/ .. cam6/)")
        if self.root.resolve() == self.vi_base or self.vi_base in self.root.resolve().parents:
            raise DatasetError(f"output {self.root} is inside the VI dataset {self.vi_base}: choose another --out")
        self.vi_ids = existing_ids(self.vi_base)
        if not self.vi_ids:
            raise DatasetError(f"{self.vi_base}: no identities found (expected cam<k>/<pid 4 digits>/ folders)")
        first_free = max(self.vi_ids) + 1
        self.new_pid_start = first_free if new_pid_start is None else new_pid_start
        if self.new_pid_start < first_free:
            clash = min((p for p in self.vi_ids if p >= self.new_pid_start), default=None)
            raise DatasetError(f"pid collision: new_pid_start={self.new_pid_start} but the VI dataset "
                               f"{self.vi_base} already uses ids up to {first_free - 1} (e.g. {clash} in "
                               f"{self.vi_ids.get(clash)}); new pids must start at {first_free} or above")
        self.root.mkdir(parents=True, exist_ok=True)
        self.pid_map: dict[int, tuple[str, int]] = {}
        self._load_pid_map()

    # 1. pids --------------------------------------------------------------------------------------------
    def _load_pid_map(self) -> None:
        path = self.root / PID_MAP
        if not path.is_file():
            return
        try:
            data = json.loads(path.read_text())
            self.pid_map = {int(e["pid"]): (str(e["source_dataset"]), int(e["source_pid"])) for e in data["entries"]}
            start = int(data["new_pid_start"])
        except (ValueError, KeyError, TypeError) as err:
            raise DatasetError(f"{path}: unreadable pid map ({err}); expected JSON {{\"new_pid_start\": N, "
                               "\"entries\": [{\"pid\": .., \"source_dataset\": .., \"source_pid\": ..}]}") from None
        clash = sorted(set(self.pid_map) & set(self.vi_ids))
        if clash:
            raise DatasetError(f"pid collision: {path} gives new pids {clash[:5]} that the VI dataset "
                               f"{self.vi_base} now uses ({self.vi_ids[clash[0]]}); write to a new output folder")
        if start != self.new_pid_start and self.pid_map:
            raise DatasetError(f"{path}: this output numbers new pids from {start}, the config asks for "
                               f"{self.new_pid_start}; use the same new_pid_start or a new output folder")

    def assign_pids(self, keys: Sequence[tuple[str, int]]) -> list[int]:
        """New pids for (source_dataset, source_pid) keys; new keys get the next free pids in sorted order."""
        known = {key: pid for pid, key in self.pid_map.items()}
        nxt = max([self.new_pid_start - 1, *self.pid_map]) + 1
        for key in sorted({(str(d), int(p)) for d, p in keys} - set(known)):
            known[key], nxt = nxt, nxt + 1
        if known and max(known.values()) > MAX_PID:
            raise DatasetError(f"new pids would reach {max(known.values())}: SYSU-MM01 pid folders hold 4 digits "
                               f"(<= {MAX_PID}); expand fewer identities or lower new_pid_start")
        if len(known) != len(self.pid_map):
            self.pid_map = {pid: key for key, pid in known.items()}
            entries = [{"pid": p, "source_dataset": k[0], "source_pid": k[1]} for p, k in sorted(self.pid_map.items())]
            atomic_write_json(self.root / PID_MAP, {"new_pid_start": self.new_pid_start, "entries": entries})
        return [known[(str(d), int(p))] for d, p in keys]

    # 2. the VI dataset's own folders ---------------------------------------------------------------------
    def link_vi_dataset(self) -> int:
        """Put the VI dataset's pid folders into the output (symlink or copy); returns how many were added."""
        added = 0
        for cam in CAMERAS:
            src_cam = self.vi_base / f"cam{cam}"
            if not src_cam.is_dir():
                raise DatasetError(f"SYSU-MM01 camera folder not found: {src_cam} (expected cam1/ .. cam6/)")
            dst_cam = self.root / f"cam{cam}"
            dst_cam.mkdir(exist_ok=True)
            with os.scandir(src_cam) as entries:
                pid_dirs = sorted((e for e in entries if e.name.isdigit() and e.is_dir()), key=lambda e: e.name)
            for entry in pid_dirs:
                dst = dst_cam / entry.name
                if dst.is_symlink() or dst.exists():
                    if self.link_mode == "symlink" and not (dst.is_symlink() and dst.resolve() == Path(entry.path).resolve()):
                        raise DatasetError(f"{dst} exists and is not a link to {entry.path}: the output folder "
                                           "belongs to another VI dataset; choose a new --out")
                    continue
                if self.link_mode == "symlink":
                    os.symlink(os.path.abspath(entry.path), dst, target_is_directory=True)
                else:
                    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=dst_cam))
                    shutil.copytree(entry.path, tmp / "copy")
                    os.replace(tmp / "copy", dst)
                    tmp.rmdir()
                added += 1
        return added

    # 3. one identity -------------------------------------------------------------------------------------
    def _part(self, pid: int) -> Path:
        return self.root / PARTS_DIR / f"part-{pid:06d}-s1.parquet"

    def _pending(self, pid: int) -> Path:
        return self.root / PARTS_DIR / f"pending-{pid:06d}-s1"

    def has_identity(self, pid: int) -> bool:
        return self._part(pid).is_file()

    def _clear(self, pid: int) -> None:
        for top in (self.root, self.root / DROPPED_DIR):
            for cam in CAMERAS:
                shutil.rmtree(top / f"cam{cam}" / f"{pid:04d}", ignore_errors=True)

    def _encode(self, image) -> bytes:
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(image).__name__}")
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="JPEG", quality=self.jpeg_quality)
        return buf.getvalue()

    def write_identity(self, pid: int, sources: Sequence[tuple[str, int, int]], generated: Sequence[Generated],
                       *, expanded: bool, info: dict | None = None) -> int:
        """Write one new identity and commit its rows; a no-op (0) when already committed.

        ``sources``: (image path, SYSU camera 1-based, source camid 0-based) of its real RGB images, copied only
        when ``expanded``; ``generated``: its generated images (kept ones go to ``cam{k}/``, dropped ones and
        all of a non-expanded identity's to ``dropped/``). Returns the number of manifest rows."""
        if pid not in self.pid_map:
            raise DatasetError(f"pid {pid} was not assigned by this writer (call assign_pids first)")
        if pid in self.vi_ids:
            raise DatasetError(f"pid collision: {pid} is an id of the VI dataset ({self.vi_ids[pid]})")
        if self.has_identity(pid):
            return 0
        pending = self._pending(pid)
        if pending.exists():
            self._clear(pid)
        atomic_write_text(pending, "")
        source_dataset, source_pid = self.pid_map[pid]
        counters: dict[tuple[str, int], int] = {}
        rows: list[dict[str, Any]] = []

        def place(top: str, cam: int, data: bytes) -> str:
            n = counters[(top, cam)] = counters.get((top, cam), 0) + 1
            rel = f"{top + '/' if top else ''}cam{cam}/{pid:04d}/{n:04d}.jpg"
            atomic_write_bytes(self.root / rel, data)
            return rel

        base = {"pid": pid, "seq": 1, "source_dataset": source_dataset, "source_pid": source_pid}
        for i, (path, cam, source_camid) in enumerate(sources):
            src = Path(path)
            if not src.is_file():
                raise DatasetError(f"source image {src} (identity {source_dataset}:{source_pid}) does not exist")
            rel, sha = "", ""
            if expanded:
                data = src.read_bytes() if src.suffix.lower() in (".jpg", ".jpeg") else self._encode_file(src)
                rel, sha = place("", cam, data), hashlib.sha256(data).hexdigest()
            rows.append({**base, "index": i, "file": rel, "camid": cam - 1, "modality": "rgb", "origin": "source",
                         "prompt": "", "seed": -1, "adapter": "", "base_model": "", "scheduler": "", "steps": 0,
                         "guidance": float("nan"), "kept": bool(expanded), "sha256": sha, "source_path": str(src),
                         "source_camid": int(source_camid)})
        for j, g in enumerate(generated):
            kept = bool(g.kept and expanded)
            rel, sha = "", ""
            if kept or self.keep_dropped:
                data = self._encode(g.image)
                rel, sha = place("" if kept else DROPPED_DIR, g.cam, data), hashlib.sha256(data).hexdigest()
            rec = g.record
            row = {**base, "index": len(sources) + j, "file": rel, "camid": g.cam - 1, "modality": g.modality,
                   "origin": "generated", "prompt": rec["prompt"], "seed": int(rec["seed"]),
                   "adapter": str(rec["adapter"]), "base_model": str(rec.get("base_model", "")),
                   "scheduler": rec["scheduler"], "steps": int(rec["steps"]), "guidance": float(rec["guidance"]),
                   **{f"score_{k}": float(v) for k, v in g.scores.items()}, "kept": kept, "sha256": sha,
                   "source_path": "", "source_camid": -1}
            rows.append(row)
        atomic_write_json(self.root / PARTS_DIR / f"ident-{pid:06d}.json",
                          {"pid": pid, "source_dataset": source_dataset, "source_pid": source_pid,
                           "source_images": [str(p) for p, _, _ in sources],
                           "info": {"expanded": bool(expanded), **(info or {})}})
        import pandas as pd

        with atomic_path(self._part(pid)) as tmp:
            pd.DataFrame(rows).to_parquet(tmp, index=False)
        pending.unlink()
        return len(rows)

    def _encode_file(self, path: Path) -> bytes:
        from PIL import Image

        with Image.open(path) as im:
            return self._encode(im)

    # 4. finishing ----------------------------------------------------------------------------------------
    def expanded_pids(self) -> list[int]:
        pids = []
        for part in sorted((self.root / PARTS_DIR).glob("ident-*.json")):
            ident = json.loads(part.read_text())
            if ident.get("info", {}).get("expanded") and self.has_identity(int(ident["pid"])):
                pids.append(int(ident["pid"]))
        return pids

    def close(self) -> dict[str, list[int]]:
        """Write exp/*_id.txt (the VI lists, train + the expanded pids) and merge the manifest parts."""
        lists: dict[str, list[int]] = {}
        for name in SPLIT_FILES:
            src = self.vi_base / "exp" / name
            if src.is_file():
                lists[name] = read_ids(src)
        lists["train_id.txt"] = sorted(set(lists.get("train_id.txt", [])) | set(self.expanded_pids()))
        for name, ids in lists.items():
            atomic_write_text(self.root / "exp" / name, ",".join(str(i) for i in ids) + "\n")
        (self.root / PARTS_DIR).mkdir(exist_ok=True)
        merge_parts(self.root)
        return {name.removesuffix(".txt"): ids for name, ids in lists.items()}
