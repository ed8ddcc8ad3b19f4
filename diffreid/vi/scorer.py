"""The cross-modality filter: a generated IR image's Re-ID features against its identity's RGB gallery.

Model: a BoT Re-ID model (the project's trainer) trained on both modalities of the VI dataset's train ids.
One ID classifier over RGB and IR images of the same people (and PK batches that mix both modalities in the
triplet loss) pulls a person's IR and RGB images together, so an IR query can be compared with RGB gallery
features. The gallery is the FAISS gallery of the filtering stage built over the expanded identities'
source RGB images, and the confidence is Re-ID CTF's (softmax over identities, see filtering.reid_ctf).
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from diffreid.config import RuntimeConfig
from diffreid.data.types import ImageRecord
from diffreid.filtering import FilterConfig, build_filters, model_extractor
from diffreid.reid.model import META_NAME, WEIGHTS_NAME
from diffreid.vi.config import ScorerConfig


def train_or_load_scorer(cfg: ScorerConfig, vi_train: Sequence[ImageRecord], out_dir: str | Path,
                         progress: bool = False) -> tuple[Path, float]:
    """The scorer's model folder and the seconds spent training it (0 when given or already trained)."""
    from diffreid.reid.train import train_reid

    if cfg.model_dir is not None:
        return Path(cfg.model_dir), 0.0
    out = Path(out_dir)
    if (out / META_NAME).is_file() and (out / WEIGHTS_NAME).is_file():
        return out, 0.0
    t0 = time.perf_counter()
    train_reid(cfg.train, list(vi_train), out_dir=out, progress=progress)
    return out, time.perf_counter() - t0


def evaluate_scorer(model_dir: str | Path, vi_dataset: str, root: str | Path, options: dict, runtime: RuntimeConfig,
                    trials: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """The scorer's test scores in the VI dataset's own protocol: SYSU-MM01 all-search and indoor-search
    single-shot (``trials`` random galleries) and RegDB's both-ways protocol on the same test people, else the
    reader's cross-modality query -> gallery (RegDB trial, LLCM infrared -> visible) with the Market ranking."""
    from diffreid.data import load_dataset
    from diffreid.reid.metrics import compute_distmat, evaluate_rank
    from diffreid.reid.vi_metrics import evaluate_regdb, evaluate_sysu_features

    sysu = vi_dataset == "sysu_mm01"
    test = load_dataset(vi_dataset, root, **({**options, "mode": "all", "gallery_shots": None} if sysu else options))
    extract = model_extractor(model_dir, runtime)
    qf, gf = extract([r.path for r in test.query]), extract([r.path for r in test.gallery])
    arrays = lambda recs: (np.array([r.pid for r in recs]), np.array([r.camid for r in recs]))
    (q_pids, q_cams), (g_pids, g_cams) = arrays(test.query), arrays(test.gallery)
    if not sysu:
        return {vi_dataset: evaluate_rank(compute_distmat(qf, gf, "cosine"), q_pids, g_pids, q_cams, g_cams).as_dict()}
    scores = {f"sysu_{mode}": evaluate_sysu_features(qf, gf, q_pids, g_pids, q_cams, g_cams, mode=mode, shots=1,
                                                     trials=trials, seed=seed).metrics
              for mode in ("all", "indoor")}
    # RegDB's protocol on the same test people: every visible image against every infrared one, both ways
    for direction in ("visible_to_thermal", "thermal_to_visible"):
        scores[f"regdb_{direction}"] = evaluate_regdb(gf, g_pids, qf, q_pids, direction)
    return scores


def build_vi_filters(cfg: FilterConfig, model_dir: str | Path, gallery: dict[int, Sequence[ImageRecord]],
                     runtime: RuntimeConfig, cache_dir: str | Path):
    """The enabled filters over an RGB gallery keyed by new pid (``gallery``: new pid -> source records)."""
    records = [replace(r, pid=pid) for pid, recs in sorted(gallery.items()) for r in recs]
    cfg = cfg.model_copy(update={"reid_model_dir": str(model_dir)})
    return build_filters(cfg, records, runtime=runtime, cache_dir=cache_dir)
