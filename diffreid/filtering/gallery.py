"""A FAISS gallery of L2-normalised source-image features labelled by pid, built once per source dataset.

On disk a gallery is a folder: ``index.faiss`` (``faiss.write_index``), ``pids.npy`` and ``gallery.json``
(index type and parameters, dimension, count, fingerprint). The folder is written beside its target and
renamed into place, so a crash never leaves a half-written gallery. Inner product on unit vectors is
cosine similarity, so every similarity here lies in [-1, 1].
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np

from diffreid.data.types import ImageRecord
from diffreid.errors import DiffreidError

IndexType = Literal["flat_ip", "ivf", "hnsw"]
INDEX_TYPES = ("flat_ip", "ivf", "hnsw")
FORMAT_VERSION = 1
MIN_POINTS_PER_LIST = 39  # faiss k-means wants about this many training points per IVF list
NORM_TOLERANCE = 1e-3
GPU_MAX_K = 2048  # FAISS GPU k-selection limit


class GalleryError(DiffreidError, ValueError):
    """Gallery input or folder is invalid; the message names what was expected."""


@dataclass(frozen=True)
class Neighbours:
    """Top-k search result: similarities (n, k) descending, gallery rows (n, k) and their pids; -1 rows/pids
    mark slots an approximate index left empty (similarity -inf there)."""

    sims: np.ndarray
    rows: np.ndarray
    pids: np.ndarray


def check_features(features: np.ndarray, what: str = "features") -> np.ndarray:
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise GalleryError(f"{what}: expected a non-empty (N, D) array, got shape {features.shape}")
    if features.dtype != np.float32:
        raise GalleryError(f"{what}: expected float32, got {features.dtype}")
    if not np.isfinite(features).all():
        raise GalleryError(f"{what}: contains NaN or inf")
    norms = np.linalg.norm(features, axis=1)
    if np.abs(norms - 1.0).max() > NORM_TOLERANCE:
        raise GalleryError(f"{what}: rows must be L2-normalised (norms range {norms.min():.4f}..{norms.max():.4f})")
    return np.ascontiguousarray(features)


def l2_normalise(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return np.ascontiguousarray(features / np.maximum(norms, 1e-12))


def records_fingerprint(records: Sequence[ImageRecord], extra: dict[str, Any] | None = None) -> str:
    """sha256 over (path, pid, file size) of every record, in order, plus ``extra`` (index params, model key)."""
    h = hashlib.sha256()
    for rec in records:
        size = os.path.getsize(rec.path) if os.path.exists(rec.path) else -1
        h.update(f"{rec.path}\t{rec.pid}\t{size}\n".encode())
    h.update(json.dumps(extra or {}, sort_keys=True, default=str).encode())
    return h.hexdigest()


@dataclass
class FaissGallery:
    """Features (kept in memory for exact per-identity similarity), their pids and a FAISS index over them."""

    index: Any
    pids: np.ndarray
    features: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    search_index: Any = None

    def __post_init__(self) -> None:
        if self.search_index is None:
            self.search_index = self.index
        self._rows_by_pid: dict[int, np.ndarray] | None = None

    # 1. build -------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, features: np.ndarray, pids: Sequence[int], *, index_type: IndexType = "flat_ip",
              ivf_nlist: int = 100, ivf_nprobe: int = 10, hnsw_m: int = 32, hnsw_ef_construction: int = 80,
              hnsw_ef_search: int = 128, use_gpu: bool = False, fingerprint: str = "") -> "FaissGallery":
        import faiss

        features = check_features(features)
        pids = np.asarray(pids, dtype=np.int64)
        if pids.shape != (features.shape[0],):
            raise GalleryError(f"pids: expected {features.shape[0]} labels (one per feature row), got shape {pids.shape}")
        if index_type not in INDEX_TYPES:
            raise GalleryError(f"index_type: expected one of {INDEX_TYPES}, got {index_type!r}")
        n, dim = features.shape
        params: dict[str, Any] = {}
        if index_type == "flat_ip":
            index = faiss.IndexFlatIP(dim)
        elif index_type == "ivf":
            nlist = max(1, min(ivf_nlist, n // MIN_POINTS_PER_LIST))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(features)
            index.nprobe = min(ivf_nprobe, nlist)
            params = {"nlist": nlist, "nprobe": index.nprobe}
        else:
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = hnsw_ef_construction
            index.hnsw.efSearch = hnsw_ef_search
            params = {"M": hnsw_m, "ef_construction": hnsw_ef_construction, "ef_search": hnsw_ef_search}
        index.add(features)
        meta = {"format_version": FORMAT_VERSION, "index_type": index_type, "params": params, "dim": dim,
                "count": n, "identities": int(len(np.unique(pids))), "fingerprint": fingerprint}
        return cls(index=index, pids=pids, features=features, meta=meta,
                   search_index=to_search_device(index, index_type, use_gpu))

    # 2. search ------------------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return int(self.pids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def index_type(self) -> str:
        return self.meta["index_type"]

    def search(self, queries: np.ndarray, k: int) -> Neighbours:
        """The k most similar gallery rows per query (k is capped at the gallery size, and at FAISS-GPU's
        limit of 2048 when the index is on a GPU)."""
        queries = check_features(queries, "queries")
        if queries.shape[1] != self.dim:
            raise GalleryError(f"queries: expected dimension {self.dim} (the gallery's), got {queries.shape[1]}")
        k = max(1, min(int(k), self.size))
        if self.search_index is not self.index:
            k = min(k, GPU_MAX_K)
        if self.index_type == "hnsw":
            self.index.hnsw.efSearch = max(self.meta["params"]["ef_search"], k)
        sims, rows = self.search_index.search(queries, k)
        rows = rows.astype(np.int64)
        empty = rows < 0
        sims = np.where(empty, -np.inf, sims).astype(np.float32)
        pids = np.where(empty, -1, self.pids[np.where(empty, 0, rows)])
        return Neighbours(sims=sims, rows=rows, pids=pids)

    def rows_of(self, pid: int) -> np.ndarray:
        if self._rows_by_pid is None:
            order = np.argsort(self.pids, kind="stable")
            uniq, starts = np.unique(self.pids[order], return_index=True)
            self._rows_by_pid = {int(p): rows for p, rows in zip(uniq, np.split(order, starts[1:]))}
        if int(pid) not in self._rows_by_pid:
            raise GalleryError(f"pid {pid} has no images in the gallery ({len(self._rows_by_pid)} identities)")
        return self._rows_by_pid[int(pid)]

    def has_pid(self, pid: int) -> bool:
        try:
            self.rows_of(pid)
        except GalleryError:
            return False
        return True

    # 3. save / load -------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        import faiss

        out = Path(folder)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            np.save(tmp / "pids.npy", self.pids)
            (tmp / "gallery.json").write_text(json.dumps(self.meta, indent=2, sort_keys=True) + "\n")
            replace_folder(tmp, out, "gallery.json")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

    @classmethod
    def load(cls, folder: str | Path, *, use_gpu: bool = False) -> "FaissGallery":
        import faiss

        folder = Path(folder)
        files = {name: folder / name for name in ("index.faiss", "pids.npy", "gallery.json")}
        missing = [name for name, p in files.items() if not p.is_file()]
        if missing:
            raise GalleryError(f"{folder}: not a gallery folder (missing {', '.join(missing)}); "
                               "expected index.faiss, pids.npy and gallery.json written by FaissGallery.save")
        try:
            meta = json.loads(files["gallery.json"].read_text())
            index = faiss.read_index(str(files["index.faiss"]))
            pids = np.load(files["pids.npy"], allow_pickle=False).astype(np.int64)
        except (ValueError, RuntimeError, OSError) as err:
            raise GalleryError(f"{folder}: cannot read gallery files: {err}") from None
        if meta.get("format_version") != FORMAT_VERSION or index.ntotal != len(pids):
            raise GalleryError(f"{folder}: inconsistent gallery (format {meta.get('format_version')}, "
                               f"{index.ntotal} vectors, {len(pids)} pids); rebuild it")
        if meta["index_type"] == "ivf":
            index.make_direct_map()
        features = index.reconstruct_n(0, index.ntotal)
        return cls(index=index, pids=pids, features=features, meta=meta,
                   search_index=to_search_device(index, meta["index_type"], use_gpu))


def to_search_device(index, index_type: str, use_gpu: bool):
    """A GPU copy of the index when asked for and faiss sees a GPU; HNSW has no GPU version and stays on CPU."""
    import faiss

    if not use_gpu or index_type == "hnsw" or faiss.get_num_gpus() == 0:
        return index
    return faiss.index_cpu_to_all_gpus(index)


def replace_folder(src: Path, dst: Path, marker: str) -> None:
    """Rename ``src`` onto ``dst``; an existing ``dst`` is moved aside first and removed after. A non-empty
    ``dst`` without ``marker`` (so not written by us) is never replaced."""
    if dst.exists() and (not dst.is_dir() or (any(dst.iterdir()) and not (dst / marker).is_file())):
        raise GalleryError(f"{dst} exists and is not a folder this code wrote (no {marker}); "
                           "remove it or choose another folder")
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old.", dir=dst.parent))
        os.replace(dst, old / dst.name)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_or_load(folder: str | Path, records: Sequence[ImageRecord],
                  extract: Callable[[list], np.ndarray], *, model_key: str = "", use_gpu: bool = False,
                  **index_kwargs: Any) -> FaissGallery:
    """The gallery saved in ``folder`` when its fingerprint matches (same source files, pids, index
    parameters and ``model_key``); otherwise extract features of ``records`` with ``extract``, build, save."""
    if not records:
        raise GalleryError("records: the source dataset has no images to build a gallery from")
    fingerprint = records_fingerprint(records, {"model": model_key, **index_kwargs})
    folder = Path(folder)
    meta_path = folder / "gallery.json"
    if meta_path.is_file():
        try:
            same = json.loads(meta_path.read_text()).get("fingerprint") == fingerprint
        except ValueError:
            same = False
        if same:
            return FaissGallery.load(folder, use_gpu=use_gpu)
    features = l2_normalise(extract([rec.path for rec in records]))
    if features.shape[0] != len(records):
        raise GalleryError(f"extract returned {features.shape[0]} feature rows for {len(records)} images")
    gallery = FaissGallery.build(features, [rec.pid for rec in records], use_gpu=use_gpu,
                                 fingerprint=fingerprint, **index_kwargs)
    gallery.save(folder)
    return gallery


def extend_gallery(gallery: FaissGallery, records: Sequence[ImageRecord], extract: Callable[[list], np.ndarray],
                   *, use_gpu: bool = False, **index_kwargs: Any) -> FaissGallery:
    """``gallery`` plus ``records`` (their features extracted now), built in memory and never saved: a cached
    source gallery stays as written while each caller adds identities of its own. The fingerprint covers both."""
    if not records:
        return gallery
    features = l2_normalise(extract([rec.path for rec in records]))
    if features.shape[0] != len(records):
        raise GalleryError(f"extract returned {features.shape[0]} feature rows for {len(records)} extra images")
    if features.shape[1] != gallery.dim:
        raise GalleryError(f"extra records: features of dimension {features.shape[1]}, the gallery's are {gallery.dim}")
    fingerprint = records_fingerprint(records, {"base": gallery.meta.get("fingerprint", "")})
    return FaissGallery.build(np.concatenate([gallery.features, features]),
                              np.concatenate([gallery.pids, np.asarray([rec.pid for rec in records], np.int64)]),
                              use_gpu=use_gpu, fingerprint=fingerprint, **index_kwargs)
