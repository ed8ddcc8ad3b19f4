"""Read a Diff-Person manifest and verify that files and manifest agree."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from diffreid.data.types import DatasetError
from diffreid.diffperson.writer import (
    DROPPED_DIR, IDENTITIES, MANIFEST, MARKET_DIR, META, PARTS_DIR, PID_MAP, REQUIRED_COLUMNS, PidMapper,
)

IMAGE_DIRS = (MARKET_DIR, "bounding_box_test", "query", DROPPED_DIR)


def _check_root(root: Path) -> None:
    if not root.is_dir():
        raise DatasetError(f"{root} does not exist or is not a folder; expected a Diff-Person output folder")
    if not (root / META).exists():
        raise DatasetError(f"{root} has no {META}; expected a folder written by DiffPersonWriter")


def read_parts(root: str | Path):
    import pandas as pd

    parts = sorted((Path(root) / PARTS_DIR).glob("part-*.parquet"))
    if not parts:
        return None
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def read_manifest(root: str | Path):
    """The manifest as a DataFrame: the committed part files when present (they are the source of truth
    during a build), else the merged ``manifest.parquet``."""
    import pandas as pd

    root = Path(root)
    _check_root(root)
    df = read_parts(root)
    if df is None:
        if not (root / MANIFEST).exists():
            return pd.DataFrame(columns=list(REQUIRED_COLUMNS))
        df = pd.read_parquet(root / MANIFEST)
    if "pid" in df and len(df):
        sort = [c for c in ("pid", "seq", "index") if c in df]
        df = df.sort_values(sort, kind="stable").reset_index(drop=True)
    return df


def read_identities(root: str | Path) -> list[dict]:
    """Per-identity info (pid, source ids, source image paths, builder info): the part files' JSON when
    present, else the merged ``identities.json``."""
    root = Path(root)
    files = sorted((root / PARTS_DIR).glob("ident-*.json"))
    if files:
        return [json.loads(p.read_text()) for p in files]
    return json.loads((root / IDENTITIES).read_text()) if (root / IDENTITIES).exists() else []


@dataclass
class VerifyReport:
    root: str
    counts: dict[str, int] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(self.problems.values())

    def add(self, category: str, item: str) -> None:
        self.problems.setdefault(category, []).append(item)

    def format(self, limit: int = 20) -> str:
        lines = [f"Diff-Person {self.root}: {'OK' if self.ok else 'INCONSISTENT'}"]
        lines += [f"  {k:<24}{v:>10}" for k, v in self.counts.items()]
        for category, items in self.problems.items():
            if items:
                lines.append(f"  {category}: {len(items)}")
                lines += [f"    {it}" for it in items[:limit]]
                if len(items) > limit:
                    lines.append(f"    ... and {len(items) - limit} more")
        return "\n".join(lines)

    __str__ = format


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(root: str | Path, checksums: bool = True, progress: bool = False) -> VerifyReport:
    """Check files ↔ manifest: missing and orphan files, checksums, duplicates, names, kept flag vs folder,
    merged manifest up to date, and the pid map (bijective, 1..N, agreeing with every row)."""
    import pandas as pd
    from tqdm import tqdm

    root = Path(root)
    _check_root(root)
    rep = VerifyReport(str(root))
    df = read_manifest(root)
    missing_cols = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing_cols:
        rep.add("manifest_problems", f"missing columns: {', '.join(missing_cols)}")
        return rep

    # 1. merged manifest up to date with the committed parts
    parts = read_parts(root)
    if parts is not None:
        merged = pd.read_parquet(root / MANIFEST) if (root / MANIFEST).exists() else None
        if merged is None:
            rep.add("manifest_problems", f"{MANIFEST} missing: the writer was not closed")
        elif sorted(merged["file"]) != sorted(parts["file"]) or len(merged) != len(parts):
            rep.add("manifest_problems", f"{MANIFEST} is stale ({len(merged)} rows, parts have {len(parts)}): "
                                         "the writer was not closed after the last add")

    for mark in sorted((root / PARTS_DIR).glob("pending-*")):
        rep.add("manifest_problems", f"{PARTS_DIR}/{mark.name}: an interrupted write (re-run the build to finish it)")

    # 2. duplicates; only dropped images may be unwritten (keep_dropped=False)
    written = df[df["file"] != ""]
    for row in df[(df["file"] == "") & df["kept"].astype(bool)].itertuples(index=False):
        rep.add("manifest_problems", f"pid {row.pid} index {getattr(row, 'index', '?')}: kept but no file")
    for name, n in written["file"].value_counts().items():
        if n > 1:
            rep.add("duplicate_rows", f"{name} appears in {n} rows")
    basenames = written["file"].map(lambda f: f.rsplit("/", 1)[-1])
    for name, n in basenames.value_counts().items():
        if n > 1:
            rep.add("duplicate_names", f"{name} is in {n} folders")

    # 3. every row: file present, right folder, name agrees with pid/camid, checksum
    rows = written.itertuples(index=False)
    for row in tqdm(rows, total=len(written), desc="verify", disable=None if progress else True):
        path = root / row.file
        folder, _, name = row.file.rpartition("/")
        if not name.startswith(f"{int(row.pid):04d}_c{int(row.camid) + 1}s"):
            rep.add("name_problems", f"{row.file}: name disagrees with pid {row.pid} camid {row.camid}")
        if folder != (MARKET_DIR if row.kept else DROPPED_DIR):
            rep.add("kept_flag_problems", f"{row.file}: kept={bool(row.kept)} but the file is in {folder}/")
        if not path.is_file():
            rep.add("missing_files", row.file)
        elif checksums and _sha256(path) != row.sha256:
            rep.add("checksum_mismatches", row.file)

    # 4. orphans: anything in the image folders the manifest does not list (incl. crashed temp files)
    listed = set(written["file"])
    on_disk = 0
    for folder in IMAGE_DIRS:
        d = root / folder
        if d.is_dir():
            for f in sorted(d.iterdir()):
                on_disk += 1
                if f"{folder}/{f.name}" not in listed:
                    rep.add("orphan_files", f"{folder}/{f.name}")

    # 5. pid map
    pid_map_path = root / PID_MAP
    mapping: dict[int, tuple[str, int]] = {}
    if not pid_map_path.exists():
        rep.add("pid_map_problems", f"{PID_MAP} missing")
    else:
        try:
            mapping = {pid: key for key, pid in PidMapper(pid_map_path).items()}
        except DatasetError as err:
            rep.add("pid_map_problems", str(err))
        else:
            triples = df[["pid", "source_dataset", "source_pid"]].drop_duplicates()
            for pid, ds, spid in triples.itertuples(index=False):
                if mapping.get(int(pid)) != (ds, int(spid)):
                    rep.add("pid_map_problems", f"pid {pid} ({ds}, {spid}) disagrees with {PID_MAP}: "
                                                f"{mapping.get(int(pid))}")
            for pid, n in triples["pid"].value_counts().items():
                if n > 1:
                    rep.add("pid_map_problems", f"pid {pid} has {n} different source identities in the manifest")

    kept = df["kept"].astype(bool)
    rep.counts = {
        "rows": len(df),
        "kept_images": int(kept.sum()),
        "dropped_images": int((~kept).sum()),
        "identities": int(df.loc[kept, "pid"].nunique()),
        "files_on_disk": on_disk,
    }
    rep.counts["mapped_identities"] = len(mapping)
    return rep
