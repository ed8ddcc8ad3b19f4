"""Re-ID confidence threshold filter (Re-ID CTF), the paper's filter.

For a generated image with Re-ID feature q claimed to show identity c:

* ``own``  = max cosine similarity between q and the gallery images of c (exact, from the stored features);
* ``rivals`` = for every other identity found among q's ``search_k`` nearest gallery images, its max
  similarity (the first hit of each identity in the ranked list);
* confidence, by ``mode``:
  - ``softmax`` (default): exp(own/τ) / (exp(own/τ) + Σ_rivals exp(s/τ)) — the probability of c under a
    softmax over identities, so a picture as close to another person as to c scores ≤ 0.5;
  - ``margin``: sigmoid((own - best rival)/τ) — the same softmax restricted to c and its nearest rival;
  - ``similarity``: own clipped to [0, 1] — no rivals at all; the only meaningful choice when the gallery
    holds a single identity (softmax and margin are then always 1).
  Rival identities outside the top-k are left out (exact when ``search_k`` ≥ gallery size).

Extra columns: ``own_sim``, ``best_other_sim`` (-1 when no other identity exists, the k-th similarity as
an upper bound when none was found within the top-k), ``margin`` = own - best_other_sim and
``best_other_pid`` (-1 when none).

A similarity floor (``min_similarity``) sets the confidence to 0 when ``own`` is below it: softmax and
margin are relative, so an image close to nobody (no person, colour noise) could otherwise be "most likely"
its claimed identity. ``"auto"`` calibrates the floor on the gallery itself (:func:`similarity_floor`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from PIL import Image

from diffreid.filtering.base import FilterError, FilterScores, ReIDConfidence, check_batch
from diffreid.filtering.gallery import FaissGallery, l2_normalise

FeatureExtractor = Callable[[list], np.ndarray]


class ReIDCTF:
    name = "reid_ctf"

    def __init__(self, extract: FeatureExtractor, gallery: FaissGallery, *, mode: ReIDConfidence = "softmax",
                 temperature: float = 0.05, search_k: int = 256, threshold: float = 0.5,
                 min_similarity: float | str | None = None):
        if mode not in ("softmax", "margin", "similarity"):
            raise FilterError(f"mode: expected softmax, margin or similarity, got {mode!r}")
        if temperature <= 0:
            raise FilterError(f"temperature must be > 0, got {temperature}")
        self.extract = extract
        self.gallery = gallery
        self.mode = mode
        self.temperature = float(temperature)
        self.search_k = int(search_k)
        self.threshold = float(threshold)
        self.min_similarity = similarity_floor(gallery) if min_similarity == "auto" else min_similarity

    def score(self, images: Sequence[Image.Image], claimed_pids: Sequence[int]) -> FilterScores:
        pids = check_batch(images, claimed_pids)
        unknown = sorted({int(p) for p in pids if not self.gallery.has_pid(p)})
        if unknown:
            raise FilterError(f"claimed pids {unknown[:10]} have no images in the Re-ID gallery "
                              f"({self.gallery.meta.get('identities')} identities)")
        if len(pids) == 0:
            empty = np.zeros(0, dtype=np.float32)
            return FilterScores.from_scores(empty, self.threshold, self.empty_extras())
        feats = l2_normalise(self.extract(list(images)))
        return self.score_features(feats, pids)

    def score_features(self, feats: np.ndarray, pids: np.ndarray) -> FilterScores:
        """Score already-extracted, L2-normalised query features (the part that does not touch the model)."""
        own = self.own_similarity(feats, pids)
        found = self.gallery.search(feats, self.search_k)
        exhaustive = found.rows.shape[1] >= self.gallery.size
        n = len(pids)
        conf = np.empty(n, dtype=np.float64)
        best_sim = np.empty(n, dtype=np.float32)
        best_pid = np.full(n, -1, dtype=np.int64)
        for i in range(n):
            valid = found.rows[i] >= 0
            sims, hit_pids = found.sims[i][valid], found.pids[i][valid]
            _, first = np.unique(hit_pids, return_index=True)  # ranked list: first hit = identity max
            rival = first[hit_pids[first] != pids[i]]
            rival_sims = sims[rival]
            if len(rival):
                j = int(np.argmax(rival_sims))
                best_sim[i], best_pid[i] = rival_sims[j], hit_pids[rival[j]]
            else:
                best_sim[i] = -1.0 if exhaustive or not valid.any() else sims.min()
            conf[i] = self.confidence(own[i], rival_sims, best_sim[i])
        if self.min_similarity is not None:
            conf[own < self.min_similarity] = 0.0
        extras = {"own_sim": own.astype(np.float32), "best_other_sim": best_sim,
                  "margin": (own - best_sim).astype(np.float32), "best_other_pid": best_pid}
        return FilterScores.from_scores(conf, self.threshold, extras)

    def own_similarity(self, feats: np.ndarray, pids: np.ndarray) -> np.ndarray:
        own = np.empty(len(pids), dtype=np.float32)
        for pid in np.unique(pids):
            at = np.flatnonzero(pids == pid)
            own[at] = (feats[at] @ self.gallery.features[self.gallery.rows_of(pid)].T).max(axis=1)
        return own

    def confidence(self, own: float, rival_sims: np.ndarray, best_other: float) -> float:
        if self.mode == "similarity":
            return float(np.clip(own, 0.0, 1.0))
        if self.mode == "margin":
            return float(1.0 / (1.0 + np.exp(-(own - best_other) / self.temperature)))
        logits = np.concatenate([[own], rival_sims]).astype(np.float64) / self.temperature
        logits -= logits.max()
        return float(np.exp(logits[0]) / np.exp(logits).sum())

    @staticmethod
    def empty_extras() -> dict[str, np.ndarray]:
        f = np.zeros(0, dtype=np.float32)
        return {"own_sim": f, "best_other_sim": f, "margin": f, "best_other_pid": np.zeros(0, dtype=np.int64)}


def similarity_floor(gallery: FaissGallery, quantile: float = 0.05) -> float | None:
    """The ``quantile`` of real images' similarity to the nearest other image of their own identity: a real
    crop is below it 1 time in 20. None when no identity has two images."""
    best = []
    for pid in np.unique(gallery.pids):
        rows = gallery.rows_of(pid)
        if len(rows) < 2:
            continue
        feats = gallery.features[rows]
        sims = feats @ feats.T
        np.fill_diagonal(sims, -np.inf)
        best.append(sims.max(axis=1))
    return float(np.quantile(np.concatenate(best), quantile)) if best else None
