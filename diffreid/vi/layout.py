"""Write an expanded VI dataset in the VI dataset's own layout (SYSU-MM01, RegDB or LLCM), so VI-ReID trainers
and ``load_dataset`` read it unchanged. ``expansion_writer(vi_dataset, out_dir, vi_base)`` picks the writer.

What every layout shares (``ExpansionWriter``)::

    dropped/<same path as a kept image>         generated images the filter dropped
    manifest/part-{pid:06d}-s1.parquet          one identity's committed rows (merged into manifest.parquet)
    manifest/ident-{pid:06d}.json               its source identity and info (merged into identities.json)
    pid_map.json                                new pid <-> (source_dataset, source_pid)

SYSU-MM01 (``SysuExpansionWriter``)::

    cam{k}/{pid:04d}/{n:04d}.jpg        the VI dataset's own pid folders (symlinks or copies) + the new pids:
                                        generated IR images in the IR cameras, the source RGB images (and any
                                        generated RGB) in the visible cameras
    exp/train_id.txt, val_id.txt, test_id.txt   the VI dataset's lists; train also lists every new pid kept

RegDB (``RegDBExpansionWriter``)::

    Visible/<n>/, Thermal/<n>/          the VI dataset's own folders (symlinks or copies)
    Visible/{pid}/source_v_{pid:05d}_{n}.jpg      a new pid's source RGB images (copied, JPEG)
    Visible/{pid}/generated_v_{pid:05d}_{n}.jpg   its generated RGB images, if any
    Thermal/{pid}/generated_t_{pid:05d}_{n}.jpg   its generated IR images
    idx/*.txt                           the VI dataset's index files; ``train_visible_{t}.txt`` and
                                        ``train_thermal_{t}.txt`` of every trial t present also list each kept
                                        new pid's images, as ``<path> <pid>`` lines

RegDB names are ``<gender>_<view>_<v|t>_<number>_<k>.bmp``; a new identity has no gender or view, so that slot
says where the image comes from (``source`` / ``generated``), the ``v`` / ``t`` modality tag stays, the number is
the pid and ``n`` counts from 1. Folders are the bare pid as in RegDB (``Visible/413/``). Images are JPEG like
the other writers (generated images are JPEG-encoded anyway; the readers and trainers take any image suffix).
The label of a new identity is its pid, the folder number (the ``regdb`` reader reads labels as pids).

LLCM (``LLCMExpansionWriter``)::

    vis/<pid 4>/, nir/<pid 4>/          the VI dataset's own pid folders (symlinks or copies)
    test_vis/, test_nir/                its test folders, when present (symlinks or copies)
    vis/{pid:04d}/{pid:04d}_c{cam:02d}_s{seq:06d}_f{n:04d}_vis.jpg   a new pid's source (seq 1) and generated
                                                                     (seq 2) RGB images, LLCM's own name form
    nir/{pid:04d}/{pid:04d}_c{cam:02d}_s000002_f{n:04d}_nir.jpg      its generated IR images
    idx/*                               the VI dataset's index files; ``train_vis.txt`` / ``train_nir.txt`` also
                                        list each kept new pid's images, as ``<path> <pid>`` lines

New pids start above every id the VI dataset uses (labels of its index files, id lists, pid folder names);
collisions are errors. An identity is written under a ``manifest/pending-…`` mark and committed by its part file,
written last; a re-run skips committed identities and clears what a crashed attempt left. ``close()`` rebuilds
the id lists / index files from the VI dataset's own files and the committed identities (atomically, so a
re-run never duplicates a line).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from diffreid.data.readers._files import locate, read_id_list, read_index
from diffreid.data.readers._registry import ALIASES
from diffreid.data.readers.visible_infrared import LLCM_EXAMPLE, REGDB_EXAMPLE
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
    """One generated image to write: its camera (1-based), modality, provenance record and scores."""

    image: Any
    cam: int
    modality: str
    record: dict
    scores: dict[str, float] = field(default_factory=dict)
    kept: bool = True


@dataclass(frozen=True)
class Slot:
    """Where one image of a new identity goes: ``folder/name.format(n=k)`` (k counts per folder and name form,
    from 1) under the output, or under ``dropped/``; ``camid`` is what the layout's reader reports (0-based)."""

    folder: str
    name: str
    camid: int


# ----------------------------------------------------------------------------------------------------------
# the shared machinery: pids, linking, pending/commit, manifest parts, dropped/, pid_map
# ----------------------------------------------------------------------------------------------------------
class ExpansionWriter:
    """Writes new identities into a copy of a VI dataset in its own layout; subclasses give the layout.

    A subclass sets ``layout`` (the name in messages), ``max_pid`` and ``pid_limit`` (why), ``no_ids_hint``, and
    implements ``_locate_base``, ``_existing_ids``, ``link_vi_dataset``, ``_pid_folders``, ``_source_slot``,
    ``_generated_slot`` and ``_write_lists``."""

    layout = ""
    max_pid = MAX_PID
    pid_limit = "pid folders hold 4 digits"
    no_ids_hint = ""

    def __init__(self, out_dir: str | Path, vi_base: str | Path, *, new_pid_start: int | None = None,
                 link_mode: str = "symlink", jpeg_quality: int = 95, keep_dropped: bool = True):
        if link_mode not in ("symlink", "copy"):
            raise ValueError(f"bad link_mode={link_mode!r}: expected 'symlink' or 'copy'")
        self.root = Path(out_dir)
        self.link_mode, self.jpeg_quality, self.keep_dropped = link_mode, jpeg_quality, keep_dropped
        self.vi_base = self._locate_base(Path(vi_base).resolve())
        if self.root.resolve() == self.vi_base or self.vi_base in self.root.resolve().parents:
            raise DatasetError(f"output {self.root} is inside the VI dataset {self.vi_base}: choose another --out")
        self.vi_ids = self._existing_ids()
        if not self.vi_ids:
            raise DatasetError(f"{self.vi_base}: no identities found ({self.no_ids_hint})")
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

    # layout hooks ----------------------------------------------------------------------------------------
    def _locate_base(self, vi_base: Path) -> Path:
        """The folder of the VI dataset that holds its lists; raises when it is not one."""
        raise NotImplementedError

    def _existing_ids(self) -> dict[int, str]:
        """Every id the VI dataset uses -> where it was first seen."""
        raise NotImplementedError

    def link_vi_dataset(self) -> int:
        """Put the VI dataset's own folders into the output (symlink or copy); returns how many were added."""
        raise NotImplementedError

    def _pid_folders(self, pid: int) -> list[str]:
        """Every folder (relative to the output and to ``dropped/``) a new pid's images may go to."""
        raise NotImplementedError

    def _source_slot(self, pid: int, cam: int) -> Slot:
        raise NotImplementedError

    def _generated_slot(self, pid: int, g: Generated) -> Slot:
        raise NotImplementedError

    def _write_lists(self) -> dict[str, list[int]]:
        """Write the layout's id lists / index files; returns list name -> its ids."""
        raise NotImplementedError

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
        if known and max(known.values()) > self.max_pid:
            raise DatasetError(f"new pids would reach {max(known.values())}: {self.layout} {self.pid_limit} "
                               f"(<= {self.max_pid}); expand fewer identities or lower new_pid_start")
        if len(known) != len(self.pid_map):
            self.pid_map = {pid: key for key, pid in known.items()}
            entries = [{"pid": p, "source_dataset": k[0], "source_pid": k[1]} for p, k in sorted(self.pid_map.items())]
            atomic_write_json(self.root / PID_MAP, {"new_pid_start": self.new_pid_start, "entries": entries})
        return [known[(str(d), int(p))] for d, p in keys]

    # 2. the VI dataset's own folders ---------------------------------------------------------------------
    def _link(self, src: str, dst: Path) -> bool:
        """Symlink or copy the folder ``src`` to ``dst``; False when ``dst`` is already there."""
        if dst.is_symlink() or dst.exists():
            if self.link_mode == "symlink" and not (dst.is_symlink() and dst.resolve() == Path(src).resolve()):
                raise DatasetError(f"{dst} exists and is not a link to {src}: the output folder "
                                   "belongs to another VI dataset; choose a new --out")
            return False
        if self.link_mode == "symlink":
            os.symlink(os.path.abspath(src), dst, target_is_directory=True)
        else:
            tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
            shutil.copytree(src, tmp / "copy")
            os.replace(tmp / "copy", dst)
            tmp.rmdir()
        return True

    def _link_children(self, src_dir: Path, dst_dir: Path, keep) -> int:
        """Link each sub-folder of ``src_dir`` whose entry passes ``keep`` into ``dst_dir``; returns how many."""
        dst_dir.mkdir(parents=True, exist_ok=True)
        with os.scandir(src_dir) as entries:
            dirs = sorted((e for e in entries if keep(e) and e.is_dir()), key=lambda e: e.name)
        return sum(self._link(entry.path, dst_dir / entry.name) for entry in dirs)

    # 3. one identity -------------------------------------------------------------------------------------
    def _part(self, pid: int) -> Path:
        return self.root / PARTS_DIR / f"part-{pid:06d}-s1.parquet"

    def _pending(self, pid: int) -> Path:
        return self.root / PARTS_DIR / f"pending-{pid:06d}-s1"

    def has_identity(self, pid: int) -> bool:
        return self._part(pid).is_file()

    def _clear(self, pid: int) -> None:
        for top in (self.root, self.root / DROPPED_DIR):
            for folder in self._pid_folders(pid):
                shutil.rmtree(top / folder, ignore_errors=True)

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

        ``sources``: (image path, camera 1-based, source camid 0-based) of its real RGB images, copied only when
        ``expanded``; ``generated``: its generated images (kept ones go to the layout's folders, dropped ones and
        all of a non-expanded identity's to ``dropped/``). Returns the number of manifest rows."""
        if pid not in self.pid_map:
            raise DatasetError(f"pid {pid} was not assigned by this writer (call assign_pids first)")
        if pid in self.vi_ids:
            raise DatasetError(f"pid collision: {pid} is an id of the VI dataset ({self.vi_ids[pid]})")
        if self.has_identity(pid):
            return 0
        source_slots = [self._source_slot(pid, cam) for _, cam, _ in sources]
        generated_slots = [self._generated_slot(pid, g) for g in generated]
        pending = self._pending(pid)
        if pending.exists():
            self._clear(pid)
        atomic_write_text(pending, "")
        source_dataset, source_pid = self.pid_map[pid]
        counters: dict[tuple[str, str, str], int] = {}
        rows: list[dict[str, Any]] = []

        def place(top: str, slot: Slot, data: bytes) -> str:
            key = (top, slot.folder, slot.name)
            n = counters[key] = counters.get(key, 0) + 1
            rel = f"{top + '/' if top else ''}{slot.folder}/{slot.name.format(n=n)}"
            atomic_write_bytes(self.root / rel, data)
            return rel

        base = {"pid": pid, "seq": 1, "source_dataset": source_dataset, "source_pid": source_pid}
        for i, ((path, _, source_camid), slot) in enumerate(zip(sources, source_slots)):
            src = Path(path)
            if not src.is_file():
                raise DatasetError(f"source image {src} (identity {source_dataset}:{source_pid}) does not exist")
            rel, sha = "", ""
            if expanded:
                data = src.read_bytes() if src.suffix.lower() in (".jpg", ".jpeg") else self._encode_file(src)
                rel, sha = place("", slot, data), hashlib.sha256(data).hexdigest()
            rows.append({**base, "index": i, "file": rel, "camid": slot.camid, "modality": "rgb", "origin": "source",
                         "prompt": "", "seed": -1, "adapter": "", "base_model": "", "scheduler": "", "steps": 0,
                         "guidance": float("nan"), "init_image": "", "kept": bool(expanded), "sha256": sha,
                         "source_path": str(src),
                         "source_camid": int(source_camid)})
        for j, (g, slot) in enumerate(zip(generated, generated_slots)):
            kept = bool(g.kept and expanded)
            rel, sha = "", ""
            if kept or self.keep_dropped:
                data = self._encode(g.image)
                rel, sha = place("" if kept else DROPPED_DIR, slot, data), hashlib.sha256(data).hexdigest()
            rec = g.record
            row = {**base, "index": len(sources) + j, "file": rel, "camid": slot.camid, "modality": g.modality,
                   "origin": "generated", "prompt": rec["prompt"], "seed": int(rec["seed"]),
                   "adapter": str(rec["adapter"]), "base_model": str(rec.get("base_model", "")),
                   "scheduler": rec["scheduler"], "steps": int(rec["steps"]), "guidance": float(rec["guidance"]),
                   "init_image": str(rec.get("init_image") or ""),
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
        """Write the id lists / index files (the VI dataset's + the expanded pids) and merge the manifest parts."""
        lists = self._write_lists()
        (self.root / PARTS_DIR).mkdir(exist_ok=True)
        merge_parts(self.root)
        return lists


# ----------------------------------------------------------------------------------------------------------
# SYSU-MM01
# ----------------------------------------------------------------------------------------------------------
class SysuExpansionWriter(ExpansionWriter):
    """Writes new identities into a SYSU-style copy of a VI dataset; see the module docstring."""

    layout = "SYSU-MM01"
    pid_limit = "pid folders hold 4 digits"
    no_ids_hint = "expected cam<k>/<pid 4 digits>/ folders"

    def _locate_base(self, vi_base: Path) -> Path:
        if not (vi_base / "exp").is_dir():
            raise DatasetError(f"VI dataset split folder not found: {vi_base / 'exp'} (expected a SYSU-MM01 "
                               "folder with exp/train_id.txt, val_id.txt, test_id.txt and cam1/ .. cam6/)")
        return vi_base

    def _existing_ids(self) -> dict[int, str]:
        return existing_ids(self.vi_base)

    def link_vi_dataset(self) -> int:
        """Put the VI dataset's pid folders into the output (symlink or copy); returns how many were added."""
        added = 0
        for cam in CAMERAS:
            src_cam = self.vi_base / f"cam{cam}"
            if not src_cam.is_dir():
                raise DatasetError(f"SYSU-MM01 camera folder not found: {src_cam} (expected cam1/ .. cam6/)")
            added += self._link_children(src_cam, self.root / f"cam{cam}", lambda e: e.name.isdigit())
        return added

    def _pid_folders(self, pid: int) -> list[str]:
        return [f"cam{cam}/{pid:04d}" for cam in CAMERAS]

    def _source_slot(self, pid: int, cam: int) -> Slot:
        return Slot(f"cam{cam}/{pid:04d}", "{n:04d}.jpg", cam - 1)

    def _generated_slot(self, pid: int, g: Generated) -> Slot:
        return self._source_slot(pid, g.cam)

    def _write_lists(self) -> dict[str, list[int]]:
        """exp/*_id.txt: the VI lists, train + the expanded pids."""
        lists: dict[str, list[int]] = {}
        for name in SPLIT_FILES:
            src = self.vi_base / "exp" / name
            if src.is_file():
                lists[name] = read_ids(src)
        lists["train_id.txt"] = sorted(set(lists.get("train_id.txt", [])) | set(self.expanded_pids()))
        for name, ids in lists.items():
            atomic_write_text(self.root / "exp" / name, ",".join(str(i) for i in ids) + "\n")
        return {name.removesuffix(".txt"): ids for name, ids in lists.items()}


# ----------------------------------------------------------------------------------------------------------
# index-file layouts: RegDB and LLCM
# ----------------------------------------------------------------------------------------------------------
class _IndexExpansionWriter(ExpansionWriter):
    """A layout read through ``idx/`` files of ``<relative path> <label>`` lines, with one image folder per
    modality holding one folder per pid. The VI dataset's pid folders are linked one by one (new pid folders
    go beside them); its ``idx/`` files are copied, and ``close()`` appends the kept images of the new pids to
    the train files (label = pid)."""

    subfolder = ""                                 # the reader also looks for the dataset in <root>/<subfolder>
    image_dirs: dict[str, str] = {}                # modality -> image folder
    example = ""                                   # an index line, for messages
    expected_idx = ""                              # the index files, for messages
    index_name = re.compile(r"$^")                 # index files of the layout (parsed for ids)
    id_list_names: tuple[str, ...] = ()            # id-list files of the layout (parsed for ids)

    def _locate_base(self, vi_base: Path) -> Path:
        if not vi_base.is_dir():
            raise DatasetError(f"VI dataset folder not found: {vi_base} (expected a {self.layout} folder)")
        base = Path(locate(str(vi_base), "idx", (self.subfolder,)))
        if not (base / "idx").is_dir():
            raise DatasetError(f"{self.layout} index folder not found: {base / 'idx'} (expected {self.expected_idx})")
        for folder in self.image_dirs.values():
            if not (base / folder).is_dir():
                raise DatasetError(f"{self.layout} image folder not found: {base / folder} (expected "
                                   f"{', '.join(f'{f}/' for f in self.image_dirs.values())} with one folder per pid)")
        return base

    def train_files(self) -> dict[str, str]:
        """The train index files new identities are appended to: file name -> modality."""
        raise NotImplementedError

    def _index_files(self) -> list[Path]:
        idx = self.vi_base / "idx"
        return sorted(p for p in idx.iterdir() if p.is_file() and (self.index_name.match(p.name)
                                                                  or p.name in self.id_list_names))

    def _ids_of(self, path: Path) -> list[int]:
        if path.name in self.id_list_names:
            return read_ids(path)
        return [label for _, _, label in read_index(str(path), self.example)]

    def _existing_ids(self) -> dict[int, str]:
        seen: dict[int, str] = {}
        for path in self._index_files():
            for pid in self._ids_of(path):
                seen.setdefault(pid, f"idx/{path.name}")
        for folder in self.image_dirs.values():
            with os.scandir(self.vi_base / folder) as entries:
                for entry in entries:
                    if entry.name.isdigit():
                        seen.setdefault(int(entry.name), f"{folder}/{entry.name}")
        return seen

    def link_vi_dataset(self) -> int:
        return sum(self._link_children(self.vi_base / folder, self.root / folder, lambda e: not e.name.startswith("."))
                   for folder in self.image_dirs.values())

    def _check_modality(self, pid: int, modality: str) -> str:
        if modality not in self.image_dirs:
            raise DatasetError(f"pid {pid}: image modality {modality!r}: expected one of "
                               f"{', '.join(map(repr, self.image_dirs))} for the {self.layout} layout")
        return self.image_dirs[modality]

    def _kept_images(self) -> list[tuple[int, str, str]]:
        """(pid, modality, file) of every kept image of the committed expanded identities, pid by pid."""
        import pandas as pd

        images = []
        for pid in self.expanded_pids():
            df = pd.read_parquet(self._part(pid), columns=["index", "file", "modality", "kept"])
            images += [(pid, r.modality, r.file) for r in df.sort_values("index").itertuples() if r.kept and r.file]
        return images

    def _write_lists(self) -> dict[str, list[int]]:
        """idx/: every file of the VI dataset's idx/ copied; the train files get one line per kept new image."""
        kept = self._kept_images()
        appends = {name: [(pid, file) for pid, m, file in kept if m == modality]
                   for name, modality in self.train_files().items()}
        lists: dict[str, list[int]] = {}
        parsed = set(self._index_files())
        for src in sorted((self.vi_base / "idx").iterdir()):
            if not src.is_file() or src.name.startswith("."):
                continue
            data = src.read_bytes()
            extra = appends.get(src.name, [])
            if extra:
                data += (b"\n" if data and not data.endswith(b"\n") else b"")
                data += "".join(f"{file} {pid}\n" for pid, file in extra).encode()
            atomic_write_bytes(self.root / "idx" / src.name, data)
            if src in parsed:
                lists[Path(src.name).stem] = sorted(set(self._ids_of(src)) | {pid for pid, _ in extra})
        return lists


class RegDBExpansionWriter(_IndexExpansionWriter):
    """Writes new identities into a RegDB-style copy of a VI dataset; see the module docstring.

    New identities are added to the train files of every trial the VI dataset has (``idx/train_visible_{t}.txt``
    for t in 1..10), so any ``trial`` reads them; the test files are copied unchanged."""

    layout = "RegDB"
    subfolder = "RegDB"
    image_dirs = {"rgb": "Visible", "ir": "Thermal"}
    example = REGDB_EXAMPLE
    expected_idx = ("idx/train_visible_{t}.txt, train_thermal_{t}.txt, test_visible_{t}.txt and test_thermal_{t}.txt "
                    "for trials t in 1..10")
    index_name = re.compile(r"^(train|test)_(visible|thermal)_(\d+)\.txt$")
    max_pid = 99999
    pid_limit = "file names hold the pid in 5 digits"
    no_ids_hint = "expected labelled lines in idx/*_visible_<trial>.txt and Visible/<pid>/ folders"

    @staticmethod
    def trials_in(idx: Path) -> list[int]:
        """The trials (1..10) with a train index file in ``idx``."""
        return [t for t in range(1, 11) if (idx / f"train_visible_{t}.txt").is_file()
                or (idx / f"train_thermal_{t}.txt").is_file()]

    def train_files(self) -> dict[str, str]:
        return {name: modality for t in self.trials_in(self.vi_base / "idx")
                for name, modality in ((f"train_visible_{t}.txt", "rgb"), (f"train_thermal_{t}.txt", "ir"))}

    def _locate_base(self, vi_base: Path) -> Path:
        base = super()._locate_base(vi_base)
        idx = base / "idx"
        trials = self.trials_in(idx)
        if not trials:
            raise DatasetError(f"no RegDB trial found in {idx} (expected {self.expected_idx})")
        missing = [f"{split}_{kind}_{t}.txt" for t in trials for split in ("train", "test")
                   for kind in ("visible", "thermal") if not (idx / f"{split}_{kind}_{t}.txt").is_file()]
        if missing:
            raise DatasetError(f"RegDB index file(s) not found in {idx}: {', '.join(missing[:4])} (every trial "
                               "needs train_visible, train_thermal, test_visible and test_thermal files)")
        return base

    def _pid_folders(self, pid: int) -> list[str]:
        return [f"{folder}/{pid}" for folder in self.image_dirs.values()]

    def _slot(self, pid: int, modality: str, origin: str) -> Slot:
        folder = self._check_modality(pid, modality)
        tag = "v" if modality == "rgb" else "t"
        return Slot(f"{folder}/{pid}", f"{origin}_{tag}_{pid:05d}_{{n}}.jpg", 0 if modality == "rgb" else 1)

    def _source_slot(self, pid: int, cam: int) -> Slot:
        return self._slot(pid, "rgb", "source")

    def _generated_slot(self, pid: int, g: Generated) -> Slot:
        return self._slot(pid, g.modality, "generated")


class LLCMExpansionWriter(_IndexExpansionWriter):
    """Writes new identities into an LLCM-style copy of a VI dataset; see the module docstring.

    New identities are appended to ``idx/train_vis.txt`` / ``idx/train_nir.txt``; the test split (index files, or
    ``idx/test_id.txt`` with the ``test_vis/`` and ``test_nir/`` folders) is kept as it is."""

    layout = "LLCM"
    subfolder = "LLCM"
    image_dirs = {"rgb": "vis", "ir": "nir"}
    test_dirs = ("test_vis", "test_nir")
    example = LLCM_EXAMPLE
    expected_idx = "idx/train_vis.txt, train_nir.txt, and test_vis.txt + test_nir.txt or test_id.txt"
    index_name = re.compile(r"^(train|test)_(vis|nir)\.txt$")
    id_list_names = ("test_id.txt",)
    pid_limit = "pid folders hold 4 digits"
    no_ids_hint = "expected labelled lines in idx/train_vis.txt and vis/<pid 4 digits>/ folders"
    SOURCE_SEQ, GENERATED_SEQ = 1, 2
    MAX_CAM = 99  # c<cam> holds 2 digits

    def train_files(self) -> dict[str, str]:
        return {"train_vis.txt": "rgb", "train_nir.txt": "ir"}

    def _locate_base(self, vi_base: Path) -> Path:
        base = super()._locate_base(vi_base)
        missing = [name for name in self.train_files() if not (base / "idx" / name).is_file()]
        if missing:
            raise DatasetError(f"LLCM index file(s) not found in {base / 'idx'}: {', '.join(missing)} (expected "
                               f"'{LLCM_EXAMPLE}' lines)")
        return base

    def _existing_ids(self) -> dict[int, str]:
        seen = super()._existing_ids()
        for test in self.test_dirs:
            folder = self.vi_base / test
            if not folder.is_dir():
                continue
            for cam_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
                for pid_dir in sorted(cam_dir.iterdir()):
                    if pid_dir.name.isdigit():
                        seen.setdefault(int(pid_dir.name), f"{test}/{cam_dir.name}/{pid_dir.name}")
        return seen

    def link_vi_dataset(self) -> int:
        added = super().link_vi_dataset()
        for test in self.test_dirs:
            if (self.vi_base / test).is_dir():
                added += self._link(str(self.vi_base / test), self.root / test)
        return added

    def _pid_folders(self, pid: int) -> list[str]:
        return [f"{folder}/{pid:04d}" for folder in self.image_dirs.values()]

    def _slot(self, pid: int, modality: str, cam: int, seq: int) -> Slot:
        folder = self._check_modality(pid, modality)
        if not isinstance(cam, int) or not 1 <= cam <= self.MAX_CAM:
            raise DatasetError(f"pid {pid}: camera {cam!r}: expected an LLCM camera 1..{self.MAX_CAM} (1-based)")
        return Slot(f"{folder}/{pid:04d}", f"{pid:04d}_c{cam:02d}_s{seq:06d}_f{{n:04d}}_{folder}.jpg", cam - 1)

    def _source_slot(self, pid: int, cam: int) -> Slot:
        return self._slot(pid, "rgb", cam, self.SOURCE_SEQ)

    def _generated_slot(self, pid: int, g: Generated) -> Slot:
        return self._slot(pid, g.modality, g.cam, self.GENERATED_SEQ)


# ----------------------------------------------------------------------------------------------------------
# the factory
# ----------------------------------------------------------------------------------------------------------
WRITERS: dict[str, type[ExpansionWriter]] = {
    "sysu_mm01": SysuExpansionWriter, "regdb": RegDBExpansionWriter, "llcm": LLCMExpansionWriter}


def expansion_writer(vi_dataset: str, out_dir: str | Path, vi_base: str | Path, **kwargs) -> ExpansionWriter:
    """The writer for the VI dataset's layout (``vi_dataset`` as ``load_dataset`` names it: "sysu_mm01",
    "regdb", "llcm"); ``kwargs`` go to the writer (``new_pid_start``, ``link_mode``, ``jpeg_quality``,
    ``keep_dropped``)."""
    key = str(vi_dataset).strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in WRITERS:
        raise DatasetError(f"no expansion writer for VI dataset {vi_dataset!r}: expected one of "
                           f"{', '.join(map(repr, sorted(WRITERS)))}")
    return WRITERS[key](out_dir, vi_base, **kwargs)
