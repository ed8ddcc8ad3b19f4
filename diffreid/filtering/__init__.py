"""Filtering stage (paper §3.2): Re-ID CTF over a FAISS gallery, CCTF, CLIP — one call, all scores kept.

Five lines from config to scores::

    cfg = FilterConfig.load("configs/toy.yaml", reid_model_dir="runs/reid")
    filters = build_filters(cfg, dataset.train, runtime=RuntimeConfig(), cache_dir="out/filters")
    scores = score_all(filters, images, claimed_pids)      # {"reid_ctf": ..., "reid_ctf_margin": ...}
    keep = decide(scores, cfg)
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

from diffreid.config import RuntimeConfig
from diffreid.data.types import ImageRecord
from diffreid.filtering.base import (FilterConfig, FilterError, FilterScores, ImageFilter, decide, model_key,
                                     score_all)
from diffreid.filtering.cctf import CCTF, IdentityClassifier, fit_or_load_classifier
from diffreid.filtering.clip_filter import CLIPFilter, build_tiny_clip, clip_model_path
from diffreid.filtering.gallery import FaissGallery, GalleryError, Neighbours, build_or_load, extend_gallery
from diffreid.filtering.reid_ctf import ReIDCTF

__all__ = ["CCTF", "CLIPFilter", "FaissGallery", "FilterConfig", "FilterError", "FilterScores",
           "GalleryError", "IdentityClassifier", "ImageFilter", "Neighbours", "ReIDCTF", "build_filters",
           "build_or_load", "build_tiny_clip", "clip_model_path", "decide", "extend_gallery", "model_extractor",
           "model_key", "score_all"]


@functools.lru_cache(maxsize=4)
def _loaded_reid_model(folder: str, key: str, device):
    from diffreid.reid.model import load_reid_model

    return load_reid_model(folder, device)


def model_extractor(model_dir: str | Path, runtime: RuntimeConfig, batch_size: int = 64):
    """Load a saved Re-ID model and return ``extract(images) -> (N, D)`` at the size it was trained at. The
    model is loaded once per folder state and device in a process (eval mode, read only), so the filter sets
    a service builds for each identity share it."""
    from diffreid.reid.features import extract_features

    folder = Path(model_dir)
    if not folder.is_dir():
        raise FilterError(f"model folder {folder} does not exist (expected one written by save_reid_model)")
    device, dtype = runtime.torch_device(), runtime.torch_dtype()
    model = _loaded_reid_model(str(folder.resolve()), model_key(folder), device)
    if model.input_size is None:
        raise FilterError(f"{folder}: the Re-ID model records no input size; re-save it with save_reid_model")

    def extract(images: list):
        return extract_features(model, images, batch_size=batch_size, device=device, dtype=dtype)

    return extract


def build_filters(cfg: FilterConfig, source_records: Sequence[ImageRecord], *, runtime: RuntimeConfig,
                  cache_dir: str | Path | None = None,
                  extra_records: Sequence[ImageRecord] = ()) -> dict[str, ImageFilter]:
    """The enabled filters for one source dataset. The gallery and the CCTF head are cached under
    ``cfg.gallery_dir`` (or ``cache_dir``) and rebuilt only when the source files or model change.

    ``extra_records`` (e.g. an uploaded identity's crops, under a pid of its own) join the source gallery in
    memory only: their features are extracted on every call and never written into the cache, and CCTF's head
    is then fitted on source + extra features without being cached. CLIP does not depend on records."""
    # 1. check inputs
    cache = cfg.gallery_dir or cache_dir
    if cache is None:
        raise FilterError("gallery_dir: set it (or pass cache_dir) to say where the gallery is cached")
    cache = Path(cache)
    needs_reid = "reid_ctf" in cfg.filters or ("cctf" in cfg.filters and cfg.cctf_model_dir is None)
    if needs_reid and cfg.reid_model_dir is None:
        raise FilterError("reid_model_dir: required by the enabled filters "
                          f"{[f for f in cfg.filters if f != 'clip']} (a folder written by save_reid_model)")
    if "clip" in cfg.filters and cfg.clip_model_dir is None:
        raise FilterError("clip_model_dir: required when 'clip' is among the enabled filters")
    extra_records = list(extra_records)
    index_kwargs = dict(index_type=cfg.index_type, ivf_nlist=cfg.ivf_nlist, ivf_nprobe=cfg.ivf_nprobe,
                        hnsw_m=cfg.hnsw_m, hnsw_ef_search=cfg.hnsw_ef_search)
    filters: dict[str, ImageFilter] = {}

    # 2. Re-ID gallery (shared by Re-ID CTF and, by default, CCTF): the cached source gallery + the extras
    if needs_reid:
        reid_extract = model_extractor(cfg.reid_model_dir, runtime, cfg.batch_size)
        gallery = build_or_load(cache / "reid_gallery", source_records, reid_extract,
                                model_key=model_key(cfg.reid_model_dir), use_gpu=cfg.use_gpu, **index_kwargs)
        gallery = extend_gallery(gallery, extra_records, reid_extract, use_gpu=cfg.use_gpu, **index_kwargs)
        if "reid_ctf" in cfg.filters:
            filters["reid_ctf"] = ReIDCTF(reid_extract, gallery, mode=cfg.reid_confidence,
                                          temperature=cfg.temperature, search_k=cfg.search_k,
                                          threshold=cfg.threshold_of("reid_ctf"), min_similarity=cfg.min_similarity)

    # 3. CCTF: linear head on the (Re-ID or own) features of the source (+ extra) images
    if "cctf" in cfg.filters:
        if cfg.cctf_model_dir is None:
            cctf_extract, features = reid_extract, gallery
        else:
            cctf_extract = model_extractor(cfg.cctf_model_dir, runtime, cfg.batch_size)
            features = build_or_load(cache / "cctf_features", source_records, cctf_extract,
                                     model_key=model_key(cfg.cctf_model_dir), index_type="flat_ip")
            features = extend_gallery(features, extra_records, cctf_extract, index_type="flat_ip")
        fingerprint = f"{features.meta['fingerprint']}:{cfg.cctf_weight_decay}:{cfg.cctf_steps}"
        fit = dict(fingerprint=fingerprint, weight_decay=cfg.cctf_weight_decay, steps=cfg.cctf_steps,
                   device=runtime.torch_device(), seed=runtime.seed)
        if extra_records:  # fitted per call: the cached head stays the source's own
            clf = IdentityClassifier.fit(features.features, features.pids, **fit)
        else:
            clf = fit_or_load_classifier(cache / "cctf_classifier", features.features, features.pids, **fit)
        filters["cctf"] = CCTF(cctf_extract, clf, threshold=cfg.threshold_of("cctf"))

    # 4. CLIP
    if "clip" in cfg.filters:
        filters["clip"] = CLIPFilter(cfg.clip_model_dir, positive_prompts=cfg.clip_positive_prompts,
                                     negative_prompts=cfg.clip_negative_prompts,
                                     threshold=cfg.threshold_of("clip"), pad_square=cfg.clip_pad_square,
                                     batch_size=cfg.batch_size, device=runtime.torch_device(),
                                     dtype=runtime.torch_dtype())
    return filters
