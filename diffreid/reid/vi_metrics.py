"""Visible-infrared Re-ID evaluation: SYSU-MM01 (all / indoor search, random gallery trials) and RegDB.

Both protocols are thin wrappers around :func:`diffreid.reid.metrics.evaluate_rank` (ranking, CMC, mAP,
mINP are never re-implemented here); they only decide which gallery items take part and which are removed.

SYSU-MM01 (Wu et al., ICCV 2017; the convention of its evaluation code and of AGW/DDAG/CAJ):

- queries are the infrared images (cameras 3 and 6, camids 2 and 5); the gallery holds visible images of
  cameras 1, 2, 4, 5 ("all" search) or 1, 2 ("indoor" search);
- per trial, ``shots`` images are drawn at random for every (identity, gallery camera): 1 = single-shot,
  10 = multi-shot; results are averaged over ``trials`` (10) draws;
- a camera-3 query ignores the camera-2 gallery images of its own identity (cameras 2 and 3 share a room
  and were recorded together). This is expressed through ``evaluate_rank``'s same-pid-same-camera rule by
  giving camera-3 queries camera 2's camid.

CMC here is image-based (``evaluate_rank``); the AGW-family scripts count ranks over distinct identities, so
their Rank-k for k > 1 can differ slightly in multi-image galleries; Rank-1, mAP and mINP are the same.

RegDB (Nguyen et al., 2017): one visible and one thermal camera; visible-to-thermal queries visible images
against the thermal gallery and thermal-to-visible the reverse; every gallery image is used. The 10 RegDB
trials are 10 train/test splits of the dataset (reader option ``trial``): evaluate each and average them
with :func:`average_results`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np

from diffreid.reid.metrics import RankResult, compute_distmat, evaluate_rank

SYSU_IR_CAMIDS = (2, 5)  # cameras 3 and 6 (camids are 0-based)
SYSU_GALLERY_CAMIDS = {"all": (0, 1, 3, 4), "indoor": (0, 1)}
SYSU_CAMERA_PAIR = {2: 1}  # a camera-3 query skips same-pid camera-2 gallery images
RANKS = (1, 5, 10, 20)
RegDBDirection = Literal["visible_to_thermal", "thermal_to_visible"]


@dataclass
class VIResult:
    """Scores averaged over trials (``metrics``: flat ``Rank-k``/``mAP``/``mINP`` dict) and each trial's."""

    metrics: dict[str, float]
    trials: list[dict[str, float]] = field(default_factory=list)
    gallery_indices: list[np.ndarray] = field(default_factory=list)  # the gallery columns each trial used

    def as_dict(self) -> dict[str, float]:
        return dict(self.metrics)


def rank_dict(result: RankResult, ranks: Sequence[int] = RANKS) -> dict[str, float]:
    """Flat ``{"Rank-1", "Rank-5", "Rank-10", "Rank-20", "mAP", "mINP"}`` (Rank-k beyond the CMC omitted)."""
    out = {f"Rank-{k}": float(result.cmc[k - 1]) for k in ranks if k <= len(result.cmc)}
    return {**out, "mAP": float(result.mAP), "mINP": float(result.mINP)}


def average_results(results: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over trials (only the keys every trial has)."""
    if not results:
        raise ValueError("average_results: no trial results to average")
    keys = [k for k in results[0] if all(k in r for r in results)]
    return {k: float(np.mean([r[k] for r in results])) for k in keys}


def sample_gallery(g_pids, g_camids, shots: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted gallery indices: ``shots`` random images (all when fewer) of every (pid, camera) group."""
    g_pids, g_camids = np.asarray(g_pids), np.asarray(g_camids)
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    order = np.lexsort((np.arange(len(g_pids)), g_camids, g_pids))
    keys = np.stack([g_pids[order], g_camids[order]], axis=1)
    starts = np.flatnonzero(np.r_[True, (keys[1:] != keys[:-1]).any(axis=1)])
    ends = np.r_[starts[1:], len(order)]
    picked = [order[a:b] if b - a <= shots else rng.choice(order[a:b], shots, replace=False)
              for a, b in zip(starts, ends)]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def evaluate_sysu(distmat, q_pids, g_pids, q_camids, g_camids, *, mode: str = "all", shots: int | None = 1,
                  trials: int = 10, seed: int = 0, max_rank: int = 20) -> VIResult:
    """SYSU-MM01 infrared-to-visible evaluation of a (num_query, num_gallery) distance matrix.

    ``q_camids`` must be infrared cameras (camids 2, 5); gallery items of cameras outside ``mode``'s set are
    ignored, so the full visible test set can be passed for both modes. Trial t draws with seed (seed, t);
    ``shots=None`` keeps every gallery image (one deterministic trial).
    """
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    if mode not in SYSU_GALLERY_CAMIDS:
        raise ValueError(f"mode {mode!r}: expected one of {sorted(SYSU_GALLERY_CAMIDS)}")
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if distmat.ndim != 2 or distmat.shape != (len(q_pids), len(g_pids)):
        raise ValueError(f"distmat shape {distmat.shape} does not match {len(q_pids)} queries x {len(g_pids)} "
                         "gallery items")
    if q_camids.shape != q_pids.shape or g_camids.shape != g_pids.shape:
        raise ValueError("q_camids/g_camids must have one camera per query/gallery item")
    not_ir = sorted(set(q_camids.tolist()) - set(SYSU_IR_CAMIDS))
    if not_ir:
        raise ValueError(f"SYSU-MM01 queries are infrared (camids {SYSU_IR_CAMIDS}, cameras 3 and 6); "
                         f"got query camids {not_ir}")
    in_mode = np.flatnonzero(np.isin(g_camids, SYSU_GALLERY_CAMIDS[mode]))
    if in_mode.size == 0:
        raise ValueError(f"no gallery item is in the {mode}-search cameras (camids {SYSU_GALLERY_CAMIDS[mode]})")
    q_rule = np.array([SYSU_CAMERA_PAIR.get(int(c), int(c)) for c in q_camids], dtype=np.int64)

    per_trial, used = [], []
    for t in range(1 if shots is None else trials):
        rng = np.random.default_rng([seed, t])
        cols = in_mode if shots is None else in_mode[sample_gallery(g_pids[in_mode], g_camids[in_mode], shots, rng)]
        result = evaluate_rank(distmat[:, cols], q_pids, g_pids[cols], q_rule, g_camids[cols], max_rank)
        per_trial.append(rank_dict(result))
        used.append(cols)
    return VIResult(metrics=average_results(per_trial), trials=per_trial, gallery_indices=used)


def evaluate_sysu_features(qf, gf, q_pids, g_pids, q_camids, g_camids, **kwargs) -> VIResult:
    """:func:`evaluate_sysu` on features (cosine distance)."""
    return evaluate_sysu(compute_distmat(qf, gf, "cosine"), q_pids, g_pids, q_camids, g_camids, **kwargs)


def evaluate_regdb(visible_feats, visible_pids, thermal_feats, thermal_pids,
                   direction: RegDBDirection = "visible_to_thermal", max_rank: int = 20) -> dict[str, float]:
    """RegDB visible-to-thermal or thermal-to-visible scores of one trial's test features (cosine distance)."""
    if direction == "visible_to_thermal":
        qf, q_pids, gf, g_pids = visible_feats, visible_pids, thermal_feats, thermal_pids
    elif direction == "thermal_to_visible":
        qf, q_pids, gf, g_pids = thermal_feats, thermal_pids, visible_feats, visible_pids
    else:
        raise ValueError(f"direction {direction!r}: expected 'visible_to_thermal' or 'thermal_to_visible'")
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    # one camera per modality: the two cameras differ, so no gallery item is ever removed
    result = evaluate_rank(compute_distmat(qf, gf, "cosine"), q_pids, g_pids, np.zeros(len(q_pids), np.int64),
                           np.ones(len(g_pids), np.int64), max_rank)
    return rank_dict(result)
