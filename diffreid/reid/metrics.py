"""Re-ID evaluation: Market protocol (CMC, mAP, mINP), CUHK03 classic, distances, k-reciprocal re-ranking.

numpy only. Conventions (the Market-1501 protocol as fast-reid and torchreid implement it):

- a smaller distance means more similar; the ranking of a query is the stable ascending order of its
  row (equal distances keep gallery order), so results never depend on sort instability;
- per query, gallery items with the same pid AND the same camera are removed; a query with no true
  match left is skipped; pids carry no special meaning here (distractors are just another pid);
- AP = mean of precision@k over the ranks k of the true matches in the whole filtered ranking;
  INP = (number of true matches) / (rank of the last one); CMC is cumulative, up to `max_rank`
  (lowered to the gallery size when smaller). All scores are fractions in [0, 1].

Speed: instead of arg-sorting every row, only the ranks of the few same-pid gallery items are needed.
Each row is sorted by value (a fast vectorised sort, no index payload) and every same-pid item's
position is found by binary search; equal distances, rare for real features, are resolved by counting
the equal values before the item in gallery order, which is exactly what a stable sort does. Row chunks
run in a thread pool (numpy sorts without holding the GIL).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

CHUNK_ELEMENTS = 1 << 22  # ≈16 MB of float32 per chunk: bounded memory, enough chunks to share out


@dataclass(frozen=True, eq=False)
class RankResult:
    """Scores of one evaluation; `query_ap`/`query_inp` hold NaN for skipped queries."""

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid_queries: int
    query_ap: np.ndarray
    query_inp: np.ndarray

    def as_dict(self) -> dict[str, float]:
        """Flat `{"Rank-1", "Rank-5", "Rank-10", "mAP", "mINP"}`; a Rank-k beyond the CMC is omitted."""
        ranks = {f"Rank-{k}": float(self.cmc[k - 1]) for k in (1, 5, 10) if k <= len(self.cmc)}
        return {**ranks, "mAP": float(self.mAP), "mINP": float(self.mINP)}


def evaluate_rank(
    distmat,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    max_rank: int = 50,
    *,
    num_threads: int | None = None,
) -> RankResult:
    """Market-protocol CMC / mAP / mINP of a (num_query, num_gallery) distance matrix.

    `num_threads`: threads sharing the row chunks (default: CPU count, at most 8).
    Raises ValueError on shape/dtype mismatches, NaN distances, or when no query has a valid match.
    """
    distmat, q_pids, g_pids, q_camids, g_camids = _check_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank
    )
    num_q, num_g = distmat.shape
    rows, ranks, is_junk = _same_pid_ranks(distmat, q_pids, g_pids, q_camids, g_camids, num_threads)
    first, query_ap, query_inp = _scores_from_ranks(num_q, rows, ranks, is_junk)
    return _result(first, query_ap, query_inp, min(max_rank, num_g))


def evaluate_cuhk03_classic(
    distmat,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    max_rank: int = 50,
    repeats: int = 10,
    seed: int = 0,
) -> RankResult:
    """The classic CUHK03 single-gallery-shot protocol.

    Per query, the gallery is filtered as in the Market protocol (same pid and same camera removed).
    Then, `repeats` times, one image is drawn uniformly at random for every gallery pid left (the
    distractor pid counts as one pid), and the query is ranked against that single-shot gallery, which
    holds exactly one true match: CMC is its cumulative hit curve, AP = INP = 1 / its rank. Each query's
    scores are averaged over the repeats, then over valid queries. Deterministic for a given `seed`.
    (torchreid's `eval_cuhk03` averages CMC the same way but takes AP over the unsampled gallery.)
    """
    distmat, q_pids, g_pids, q_camids, g_camids = _check_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank
    )
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if distmat.dtype.kind == "f" and np.isnan(distmat).any():
        raise ValueError(_NAN)
    rng = np.random.default_rng(seed)
    num_q, num_g = distmat.shape
    by_pid = np.argsort(g_pids, kind="stable")
    pids, group_starts, group_sizes = np.unique(g_pids[by_pid], return_index=True, return_counts=True)
    query_ap = np.full(num_q, np.nan)
    sampled_ranks = []
    for i in range(num_q):
        own = np.searchsorted(pids, q_pids[i])
        if own == len(pids) or pids[own] != q_pids[i]:
            continue
        members = by_pid[group_starts[own] : group_starts[own] + group_sizes[own]]
        matches = members[g_camids[members] != q_camids[i]]  # same-camera items are removed
        if matches.size == 0:
            continue
        # One draw per pid and repeat; only same-pid items were filtered, so other groups are whole.
        drawn = by_pid[group_starts + rng.integers(0, group_sizes, (repeats, len(pids)))]
        match = matches[rng.integers(0, matches.size, repeats)][:, None]
        row = distmat[i]
        ahead = (row[drawn] < row[match]) | ((row[drawn] == row[match]) & (drawn < match))
        ahead[:, own] = False
        rank = np.count_nonzero(ahead, axis=1)  # 0-based rank of the match, per repeat (stable order)
        sampled_ranks.append(rank)
        query_ap[i] = np.mean(1.0 / (rank + 1))
    if not sampled_ranks:
        raise ValueError(_NO_VALID_QUERY)
    ranks = np.stack(sampled_ranks)  # (valid queries, repeats)
    cut = min(max_rank, num_g)
    hits = np.bincount(np.minimum(ranks.ravel(), cut), minlength=cut + 1)[:cut]
    cmc = np.cumsum(hits) / ranks.size
    valid = ~np.isnan(query_ap)
    mean_ap = float(np.mean(query_ap[valid]))
    return RankResult(cmc, mean_ap, mean_ap, int(valid.sum()), query_ap, query_ap.copy())


def compute_distmat(qf, gf, metric: str = "cosine") -> np.ndarray:
    """(num_query, num_gallery) float32 distances between feature rows.

    "cosine": 1 - cosine similarity, in [0, 2] (features are L2-normalised here; zero vectors get 1);
    "euclidean": L2 distance.
    """
    qf = _features(qf, "qf")
    gf = _features(gf, "gf")
    if qf.shape[1] != gf.shape[1]:
        raise ValueError(f"qf and gf must have the same feature size, got {qf.shape} and {gf.shape}")
    if metric == "cosine":
        qf = qf / np.maximum(np.linalg.norm(qf, axis=1, keepdims=True), 1e-12)
        gf = gf / np.maximum(np.linalg.norm(gf, axis=1, keepdims=True), 1e-12)
        return np.clip(1.0 - qf @ gf.T, 0.0, 2.0).astype(np.float32)  # clip float rounding
    if metric == "euclidean":
        squared = (qf * qf).sum(1)[:, None] + (gf * gf).sum(1)[None, :] - 2.0 * (qf @ gf.T)
        return np.sqrt(np.maximum(squared, 0.0)).astype(np.float32)
    raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")


def re_ranking(
    q_g_dist, q_q_dist, g_g_dist, k1: int = 20, k2: int = 6, lambda_value: float = 0.3
) -> np.ndarray:
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017); returns the new (num_query, num_gallery) distances.

    Over the pooled query+gallery set, with distances d scaled by their overall maximum:
    N(p, k) = p itself followed by its k nearest other items (equal distances in index order);
    R(p, k) = the items of N(p, k) that also hold p in their own N(·, k) (k-reciprocal neighbours);
    R*(p, k1) = R(p, k1) joined with every R(c, round(k1/2)) of a c in R(p, k1) that shares at least
    2/3 of its items with R(p, k1);
    V_p = Gaussian weights exp(-d(p, i)) on R*(p, k1), normalised to sum 1 (our choice beyond the
    paper's eq. 8, so large and small neighbour sets weigh alike), then averaged over the first k2
    items of N(p, ·) (local query expansion; k2 = 1 turns it off);
    d_J(p, g) = 1 - sum(min(V_p, V_g)) / sum(max(V_p, V_g)) (Jaccard distance);
    result = (1 - lambda_value) * d_J + lambda_value * d.
    Any non-negative distance works; squared Euclidean or cosine distances of features are usual.
    Memory is O((num_query + num_gallery)^2).
    """
    q_g = _float_matrix(q_g_dist, "q_g_dist")
    q_q = _float_matrix(q_q_dist, "q_q_dist")
    g_g = _float_matrix(g_g_dist, "g_g_dist")
    num_q, num_g = q_g.shape
    if q_q.shape != (num_q, num_q) or g_g.shape != (num_g, num_g):
        raise ValueError(
            f"for q_g_dist {q_g.shape}, q_q_dist must be {(num_q, num_q)} and g_g_dist "
            f"{(num_g, num_g)}, got {q_q.shape} and {g_g.shape}"
        )
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    total = num_q + num_g
    depth = max(k1 + 1, k2)
    if depth > total:
        raise ValueError(f"k1={k1}, k2={k2} need at least {depth} query+gallery items, got {total}")

    # 1. Pooled distances, scaled to [0, 1]; an item is at distance 0 from itself.
    dist = np.block([[q_q, q_g], [q_g.T, g_g]])
    if dist.min() < 0:
        raise ValueError(f"re_ranking needs non-negative distances, got a minimum of {dist.min():g}")
    dist = _scaled(dist)

    # 2-3. k-reciprocal neighbour weights with local query expansion.
    weights = _k_reciprocal_weights(dist, k1, k2)

    # 4. Jaccard distance of each query to each gallery item (rows sum to 1: sum(max) = 2 - sum(min)).
    jaccard = np.empty((num_q, num_g), dtype=np.float32)
    gallery_weights = weights[num_q:]
    for p in range(num_q):
        support = np.flatnonzero(weights[p])
        shared = np.minimum(gallery_weights[:, support], weights[p, support]).sum(axis=1)
        jaccard[p] = np.clip(1.0 - shared / (2.0 - shared), 0.0, 1.0)  # clip float rounding
    return ((1.0 - lambda_value) * jaccard + lambda_value * dist[:num_q, num_q:]).astype(np.float32)


def jaccard_distance(dist, k1: int = 30, k2: int = 6) -> np.ndarray:
    """(N, N) k-reciprocal Jaccard distances within one set of items, from their pairwise distances ``dist``.

    The same neighbour sets and weights as :func:`re_ranking` (steps 1-3 there) over the N items themselves,
    without mixing the original distance back in: d_J(p, q) = 1 - sum(min(V_p, V_q)) / sum(max(V_p, V_q)),
    symmetric, 0 on the diagonal, in [0, 1]. This is the distance Cluster-Contrast and SpCL cluster with
    DBSCAN (their ``compute_jaccard_distance``, k1=30, k2=6). Memory is O(N^2).
    """
    dist = _float_matrix(dist, "dist")
    n = len(dist)
    if dist.shape != (n, n):
        raise ValueError(f"dist must be square (N, N), got {dist.shape}")
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if max(k1 + 1, k2) > n:
        raise ValueError(f"k1={k1}, k2={k2} need at least {max(k1 + 1, k2)} items, got {n}")
    if dist.min() < 0:
        raise ValueError(f"jaccard_distance needs non-negative distances, got a minimum of {dist.min():g}")
    weights = _k_reciprocal_weights(_scaled(dist), k1, k2)
    jaccard = np.empty((n, n), dtype=np.float32)
    for p in range(n):
        support = np.flatnonzero(weights[p])
        shared = np.minimum(weights[:, support], weights[p, support]).sum(axis=1)
        jaccard[p] = np.clip(1.0 - shared / (2.0 - shared), 0.0, 1.0)
    jaccard = np.minimum(jaccard, jaccard.T)  # float rounding only: min(V_p, V_q) is symmetric
    np.fill_diagonal(jaccard, 0.0)
    return jaccard


def _scaled(dist):
    """A pooled non-negative distance matrix with a zero diagonal, divided by its maximum."""
    dist = dist.copy()
    np.fill_diagonal(dist, 0.0)
    top = dist.max()
    if top > 0:
        dist /= top
    return dist


def _k_reciprocal_weights(dist, k1, k2):
    """Row p: the normalised Gaussian weights of p's expanded k-reciprocal set R*(p, k1), averaged over its k2
    nearest items (see :func:`re_ranking`); ``dist`` is pooled and scaled to [0, 1]."""
    total = len(dist)
    nearest = _nearest(dist, max(k1 + 1, k2))
    weights = np.zeros((total, total), dtype=np.float32)
    for p, expanded in enumerate(_expanded_sets(nearest, k1)):
        w = np.exp(-dist[p, expanded])
        weights[p, expanded] = w / w.sum()
    if k2 > 1:  # local query expansion over the k2 nearest items
        expanded_weights = np.zeros_like(weights)
        for j in range(k2):
            expanded_weights += weights[nearest[:, j]]
        weights = expanded_weights / k2
    return weights


def _expanded_sets(nearest, k1):
    """R*(p, k1) of every item p (sorted indices), from neighbour lists ``nearest`` (row p: p itself, then its
    nearest others, at least k1 + 1 columns): R(p, k1) joined with every R(c, round(k1/2)) of a c in R(p, k1)
    that shares at least 2/3 of its items with R(p, k1). Shared by the dense and the k-NN Jaccard distances."""
    total = len(nearest)
    half = max(1, int(round(k1 / 2)))
    recip = [_reciprocal(nearest[:, : k1 + 1], p) for p in range(total)]
    recip_half = [_reciprocal(nearest[:, : half + 1], p) for p in range(total)]
    for p in range(total):
        members = recip[p]
        expanded = members
        for c in members:
            candidate = recip_half[c]
            if 3 * np.intersect1d(candidate, members, assume_unique=True).size >= 2 * candidate.size:
                expanded = np.union1d(expanded, candidate)
        yield expanded


def jaccard_distance_knn(features, k1: int = 30, k2: int = 6, max_distance: float | None = None):
    """Sparse (N, N) k-reciprocal Jaccard distances of feature rows, from their FAISS k nearest neighbours.

    The rule of :func:`jaccard_distance` (R(p, k1), the 2/3-overlap expansion with R(c, round(k1/2)), Gaussian
    weights normalised to sum 1, k2 local query expansion, d_J = 1 - sum(min) / sum(max)), computed over
    neighbour lists only, for the cosine distance d = max(0, 1 - <x_p, x_i>) of the L2-normalised rows:

    - neighbour lists: an exact FAISS inner-product search (``IndexFlatIP``) of the max(k1 + 1, k2) nearest
      items, each list starting with the item itself; equal similarities come in FAISS's order, not always by
      index;
    - weights: exp(-d(p, i)) with d from the dot products of the rows involved, UNSCALED, as Cluster-Contrast's
      ``compute_jaccard_distance`` does (it uses 2 - 2<x_p, x_i>); the dense function divides d by its
      overall maximum first (a maximum that needs every pair), so its weights are exp(-d / max d): the same
      neighbour sets, slightly different weights, and so slightly different distance values;
    - distances: only for pairs whose weight supports overlap (an inverted index column -> rows); every other
      pair is at distance 1 and is not stored. The diagonal is stored explicitly as 0, so a consumer of
      stored entries (scikit-learn's DBSCAN / radius neighbours with metric="precomputed") counts each item
      as its own neighbour; pairs at distance 0 are stored as explicit zeros too.

    ``max_distance`` (e.g. DBSCAN's eps): pairs farther apart are not stored either, which bounds memory when
    hub items overlap with very many others (a consumer that only asks "within eps?" loses nothing).

    Returns a symmetric float32 ``scipy.sparse.csr_matrix`` with values in [0, 1] and sorted indices.
    Memory is O(N * (k1 + candidates)) where candidates are the overlapping pairs per row; no (N, N) array.
    Candidates stay small for clustered features (~1,000 a row for 20 images per identity) but grow with
    hubness: structureless random 64-D features give ~12,000 a row at N=20,000.
    """
    import faiss
    from scipy import sparse

    x = _features(features, "features")
    n = len(x)
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    depth = max(k1 + 1, k2)
    if depth > n:
        raise ValueError(f"k1={k1}, k2={k2} need at least {depth} items, got {n}")
    if max_distance is not None and not 0 <= max_distance <= 1:
        raise ValueError(f"max_distance must be in [0, 1] (a Jaccard distance), got {max_distance}")
    x = np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12), dtype=np.float32)

    # 1. Neighbour lists: the item itself, then its nearest others in FAISS's order.
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, found = index.search(x, min(depth + 1, n))
    rows = np.arange(n)
    is_self = found == rows[:, None]
    others = np.take_along_axis(found, np.argsort(is_self, axis=1, kind="stable"), axis=1)
    nearest = np.concatenate([rows[:, None], others[:, : depth - 1]], axis=1).astype(np.int64)
    del index, found, is_self, others

    # 2. Sparse Gaussian weights on R*(p, k1), normalised per row, then the k2 local query expansion.
    sizes = np.empty(n, dtype=np.int64)
    cols, vals = [], []
    for p, expanded in enumerate(_expanded_sets(nearest, k1)):
        w = np.exp(-np.maximum(1.0 - x[expanded] @ x[p], 0.0))
        sizes[p] = expanded.size
        cols.append(expanded)
        vals.append(w / w.sum())
    indptr = np.concatenate([[0], np.cumsum(sizes)])
    weights = sparse.csr_matrix((np.concatenate(vals).astype(np.float32), np.concatenate(cols), indptr),
                                shape=(n, n))
    del cols, vals
    if k2 > 1:
        expansion = sparse.csr_matrix(
            (np.full(n * k2, 1.0 / k2, dtype=np.float32), nearest[:, :k2].ravel(), np.arange(0, n * k2 + 1, k2)),
            shape=(n, n))
        weights = (expansion @ weights).tocsr()
    weights.sum_duplicates()
    weights.sort_indices()

    # 3. shared(p, q) = sum_j min(V_pj, V_qj) over the columns j both hold (inverted index: CSC), in row chunks.
    #    Per pair the terms are summed in ascending j for both (p, q) and (q, p), so the result is exactly
    #    symmetric without a symmetrising pass.
    by_column = weights.tocsc()
    by_column.sort_indices()
    col_start = by_column.indptr[weights.indices]
    col_count = by_column.indptr[weights.indices + 1] - col_start
    done = np.cumsum(np.add.reduceat(col_count, weights.indptr[:-1]))  # (p, j, q) triples up to row p
    budget = 1 << 22  # triples per chunk
    bounds = [0]
    while bounds[-1] < n:
        base = done[bounds[-1] - 1] if bounds[-1] else 0
        bounds.append(max(bounds[-1] + 1, int(np.searchsorted(done, base + budget, "right"))))
    row_sizes = np.empty(n, dtype=np.int64)
    block_cols, block_vals = [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        lo, hi = weights.indptr[a], weights.indptr[b]
        counts = col_count[lo:hi]
        entry = np.repeat(np.arange(lo, hi), counts)  # triples in (p, ascending j, q) order
        pos = col_start[entry] + np.arange(entry.size) - np.repeat(np.cumsum(counts) - counts, counts)
        row = np.repeat(np.repeat(np.arange(b - a), np.diff(weights.indptr[a : b + 1])), counts)
        key = row * n + by_column.indices[pos]
        order = np.argsort(key, kind="stable")  # keeps ascending j within a pair
        key = key[order]
        terms = np.minimum(weights.data[entry], by_column.data[pos])[order]
        first = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
        shared = np.add.reduceat(terms, first)
        pair_row, pair_col = np.divmod(key[first], n)
        # 4. d_J = 1 - shared / (2 - shared) (rows of V sum to 1, so sum(max) = 2 - sum(min)); diagonal 0,
        #    stored explicitly (every item overlaps itself).
        jac = np.clip(1.0 - shared / (2.0 - shared), 0.0, 1.0).astype(np.float32)
        diagonal = pair_row + a == pair_col
        jac[diagonal] = 0.0
        if max_distance is not None:
            near = diagonal | (jac <= max_distance)
            pair_row, pair_col, jac = pair_row[near], pair_col[near], jac[near]
        row_sizes[a:b] = np.bincount(pair_row, minlength=b - a)
        block_cols.append(pair_col.astype(np.int32))
        block_vals.append(jac)
        del entry, pos, row, key, order, terms, first, shared, pair_row, pair_col
    del by_column, weights
    indptr = np.concatenate([[0], np.cumsum(row_sizes)])
    data = np.empty(indptr[-1], dtype=np.float32)
    indices = np.empty(indptr[-1], dtype=np.int32)
    start = 0
    while block_vals:  # fill in place, freeing each block as it is copied
        vals, cols = block_vals.pop(0), block_cols.pop(0)
        data[start : start + vals.size] = vals
        indices[start : start + vals.size] = cols
        start += vals.size
    jaccard = sparse.csr_matrix((data, indices, indptr), shape=(n, n))
    jaccard.has_sorted_indices = True
    return jaccard


# ----------------------------------------------------------------------------------------------------
_NAN = "distmat contains NaN; distances must be comparable numbers"
_NO_VALID_QUERY = (
    "no query has a valid match: every query's pid is absent from the gallery once same-pid "
    "same-camera items are removed (check that q_pids/g_pids and q_camids/g_camids belong together)"
)


def _check_inputs(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {distmat.shape}")
    if distmat.dtype.kind not in "fiu":
        raise ValueError(f"distmat must hold real numbers, got dtype {distmat.dtype}")
    num_q, num_g = distmat.shape
    if num_q == 0 or num_g == 0:
        raise ValueError(f"distmat must have at least one query and one gallery item, got {distmat.shape}")
    labels = []
    for name, values, size, axis in (
        ("q_pids", q_pids, num_q, "rows"),
        ("g_pids", g_pids, num_g, "columns"),
        ("q_camids", q_camids, num_q, "rows"),
        ("g_camids", g_camids, num_g, "columns"),
    ):
        values = np.asarray(values)
        if values.shape != (size,):
            raise ValueError(
                f"{name} must have shape ({size},) to match the {axis} of distmat {distmat.shape}, "
                f"got {values.shape}"
            )
        if values.dtype.kind not in "iu":
            raise ValueError(f"{name} must hold integers, got dtype {values.dtype}")
        labels.append(values)
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}")
    return (distmat, *labels)


def _same_pid_ranks(distmat, q_pids, g_pids, q_camids, g_camids, num_threads):
    """For every (query, gallery item) pair with the same pid, in query order then gallery order: the
    query row, the item's 0-based rank in the query's stable ascending order (before filtering), and
    whether it shares the query's camera (to be removed)."""
    num_q, num_g = distmat.shape
    # 1. Same-pid gallery items of every query, found by pid lookup (no query × gallery comparison).
    by_pid = np.argsort(g_pids, kind="stable")
    lo = np.searchsorted(g_pids[by_pid], q_pids, "left")
    counts = np.searchsorted(g_pids[by_pid], q_pids, "right") - lo
    offsets = np.cumsum(counts) - counts
    rows = np.repeat(np.arange(num_q), counts)
    cols = by_pid[np.repeat(lo - offsets, counts) + np.arange(counts.sum())]
    values = distmat[rows, cols]
    ranks = np.empty(len(rows), dtype=np.int64)

    # 2. Their ranks: binary search in each sorted row; chunks of rows share the threads.
    step = max(1, CHUNK_ELEMENTS // num_g)

    def rank_chunk(start):
        stop = min(start + step, num_q)
        ordered = np.sort(distmat[start:stop], axis=1)
        if ordered.dtype.kind == "f" and np.isnan(ordered[:, -1]).any():  # NaN sorts last
            raise ValueError(_NAN)
        for r in range(start, stop):
            a, b = offsets[r], offsets[r] + counts[r]
            if a == b:
                continue
            below = ordered[r - start].searchsorted(values[a:b], "left")
            up_to = ordered[r - start].searchsorted(values[a:b], "right")
            ranks[a:b] = below
            # Equal distances: a stable sort puts the earlier gallery items first.
            for j in np.flatnonzero(up_to - below > 1) + a:
                ranks[j] += np.count_nonzero(distmat[r, : cols[j]] == values[j])

    starts = range(0, num_q, step)
    threads = min(num_threads or min(os.cpu_count() or 1, 8), len(starts))
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(rank_chunk, starts))
    else:
        for start in starts:
            rank_chunk(start)
    return rows, ranks, g_camids[cols] == q_camids[rows]


def _scores_from_ranks(num_q, rows, ranks, is_junk):
    """Filtered ranks of the true matches → first-hit rank, AP and INP per query (NaN if skipped)."""
    order = np.lexsort((ranks, rows))
    rows, ranks, is_junk = rows[order], ranks[order], is_junk[order]
    junk_before = np.cumsum(is_junk) - is_junk
    filtered = ranks - (junk_before - junk_before[np.searchsorted(rows, rows)])
    good = ~is_junk
    rows, filtered = rows[good], filtered[good]
    hit_number = np.arange(len(rows)) - np.searchsorted(rows, rows) + 1
    num_hits = np.bincount(rows, minlength=num_q)
    precision_sum = np.bincount(rows, weights=hit_number / (filtered + 1), minlength=num_q)
    valid = np.flatnonzero(num_hits)
    if valid.size == 0:
        raise ValueError(_NO_VALID_QUERY)
    first = filtered[np.searchsorted(rows, valid, "left")]
    last = filtered[np.searchsorted(rows, valid, "right") - 1]
    query_ap = np.full(num_q, np.nan)
    query_inp = np.full(num_q, np.nan)
    query_ap[valid] = precision_sum[valid] / num_hits[valid]
    query_inp[valid] = num_hits[valid] / (last + 1)
    return first, query_ap, query_inp


def _result(first, query_ap, query_inp, cut):
    hits = np.bincount(np.minimum(first, cut), minlength=cut + 1)[:cut]
    cmc = np.cumsum(hits) / len(first)
    valid = ~np.isnan(query_ap)
    return RankResult(
        cmc=cmc,
        mAP=float(np.mean(query_ap[valid])),
        mINP=float(np.mean(query_inp[valid])),
        num_valid_queries=int(valid.sum()),
        query_ap=query_ap,
        query_inp=query_inp,
    )


def _features(x, name):
    x = np.asarray(x)
    if x.ndim != 2 or x.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a 2-D numeric array (num_items, dim), got {x.shape} {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _float_matrix(x, name):
    x = np.asarray(x)
    if x.ndim != 2 or x.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a 2-D numeric array, got {x.shape} {x.dtype}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _nearest(dist, k):
    """Per row p of a pooled non-negative distance matrix: p, then its k-1 nearest others in stable
    ascending order (equal distances by column index)."""
    out = np.empty((len(dist), k), dtype=np.int64)
    for p, row in enumerate(dist):
        row = row.copy()
        row[p] = -1.0  # self first
        candidates = np.flatnonzero(row <= np.partition(row, k - 1)[k - 1])
        out[p] = candidates[np.argsort(row[candidates], kind="stable")[:k]]
    return out


def _reciprocal(nearest, p):
    """Sorted indices i in p's neighbour list whose own neighbour list holds p."""
    candidates = nearest[p]
    return np.sort(candidates[(nearest[candidates] == p).any(axis=1)])
