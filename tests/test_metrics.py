"""Re-ID metrics against a plain per-query reference loop, hand-computed cases, and error cases."""

import itertools

import numpy as np
import pytest

from diffreid.reid import metrics
from diffreid.reid.metrics import (
    compute_distmat,
    evaluate_cuhk03_classic,
    evaluate_rank,
    re_ranking,
)


# --- the obviously-correct reference (slow is fine) ---------------------------------------------
def reference_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    num_q, num_g = distmat.shape
    cut = min(max_rank, num_g)
    cmcs = []
    ap = np.full(num_q, np.nan)
    inp = np.full(num_q, np.nan)
    for i in range(num_q):
        order = np.argsort(distmat[i], kind="stable")
        junk = (g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i])
        hits = (g_pids[order] == q_pids[i])[~junk]
        if not hits.any():
            continue
        positions = np.flatnonzero(hits)  # 0-based ranks of the true matches
        cmc = np.zeros(cut)
        if positions[0] < cut:
            cmc[positions[0] :] = 1.0
        cmcs.append(cmc)
        ap[i] = np.mean([(n + 1) / (pos + 1) for n, pos in enumerate(positions)])
        inp[i] = len(positions) / (positions[-1] + 1)
    return np.mean(cmcs, axis=0), ap, inp


def assert_same_as_reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, **kw):
    cmc, ap, inp = reference_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    result = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, **kw)
    assert np.array_equal(result.cmc, cmc)
    np.testing.assert_allclose(result.query_ap, ap, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.query_inp, inp, rtol=0, atol=1e-12)
    valid = ~np.isnan(ap)
    assert result.num_valid_queries == valid.sum()
    assert result.mAP == pytest.approx(ap[valid].mean(), abs=1e-12)
    assert result.mINP == pytest.approx(inp[valid].mean(), abs=1e-12)
    return result


def random_case(rng, num_q, num_g, num_pids, num_cams, kind):
    q_pids = rng.integers(1, num_pids + 1, num_q)
    g_pids = rng.integers(0, num_pids + 1, num_g)  # pid 0: distractors
    q_camids = rng.integers(0, num_cams, num_q)
    g_camids = rng.integers(0, num_cams, num_g)
    if kind == "distinct":
        distmat = rng.permutation(num_q * num_g).reshape(num_q, num_g).astype(np.float32)
    elif kind == "ties":
        distmat = rng.integers(0, 4, (num_q, num_g)).astype(np.float32)
    elif kind == "signed_zero":
        distmat = rng.choice(np.array([-0.0, 0.0, 1.0], np.float32), (num_q, num_g))
    else:
        distmat = rng.random((num_q, num_g), dtype=np.float32)
    return distmat, q_pids, g_pids, q_camids, g_camids


def has_valid_query(distmat, q_pids, g_pids, q_camids, g_camids):
    same_pid = q_pids[:, None] == g_pids[None, :]
    return (same_pid & (q_camids[:, None] != g_camids[None, :])).any()


# --- Market protocol ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["distinct", "random", "ties", "signed_zero"])
def test_matches_reference_on_random_cases(kind):
    rng = np.random.default_rng(["distinct", "random", "ties", "signed_zero"].index(kind))
    checked = skipped_queries = 0
    for _ in range(60):
        case = random_case(
            rng, int(rng.integers(1, 25)), int(rng.integers(1, 70)), int(rng.integers(1, 8)), 3, kind
        )
        max_rank = int(rng.choice([1, 5, 50, 200]))
        if not has_valid_query(*case):
            with pytest.raises(ValueError, match="no query has a valid match"):
                evaluate_rank(*case, max_rank)
            continue
        result = assert_same_as_reference(*case, max_rank=max_rank, num_threads=2)
        assert len(result.cmc) == min(max_rank, case[0].shape[1])
        skipped_queries += len(case[1]) - result.num_valid_queries
        checked += 1
    assert checked > 30 and skipped_queries > 0  # the sampling really exercised skipping


def test_medium_size_equals_reference_and_threads_agree(monkeypatch):
    rng = np.random.default_rng(7)
    case = random_case(rng, 300, 2000, 120, 6, "random")
    one = assert_same_as_reference(*case, num_threads=1)
    monkeypatch.setattr(metrics, "CHUNK_ELEMENTS", 7 * 2000)  # 43 chunks of 7 rows over 2 threads
    two = evaluate_rank(*case, num_threads=2)
    assert np.array_equal(one.cmc, two.cmc)
    assert np.array_equal(one.query_ap, two.query_ap, equal_nan=True)
    tied = (np.round(case[0] * 8) / 8).astype(np.float32)  # heavy ties, still exact
    assert_same_as_reference(tied, *case[1:])


def test_distinct_distances_do_not_depend_on_gallery_order():
    rng = np.random.default_rng(12)
    distmat, q_pids, g_pids, q_cams, g_cams = random_case(rng, 40, 300, 25, 4, "distinct")
    perm = rng.permutation(300)
    a = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams)
    b = evaluate_rank(distmat[:, perm], q_pids, g_pids[perm], q_cams, g_cams[perm])
    assert np.array_equal(a.cmc, b.cmc)
    np.testing.assert_allclose(a.query_ap, b.query_ap, atol=1e-12)


def test_hand_computed_average_precision():
    # query pid 1, camera 0; sorted gallery: p1/c1, p2, junk p1/c0, p3, p1/c1
    distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]], np.float32)
    g_pids = np.array([1, 2, 1, 3, 1])
    g_cams = np.array([1, 1, 0, 1, 1])
    result = evaluate_rank(distmat, np.array([1]), g_pids, np.array([0]), g_cams)
    # filtered ranking: hit, miss, miss, hit → AP = (1/1 + 2/4) / 2, INP = 2/4
    assert result.mAP == pytest.approx(0.75)
    assert result.mINP == pytest.approx(0.5)
    assert np.array_equal(result.cmc, [1, 1, 1, 1, 1])
    # hits at ranks 3 and 5: AP = (1/3 + 2/5) / 2 = 11/30
    distmat = np.array([[0.3, 0.1, 0.2, 0.4, 0.5]], np.float32)
    g_pids = np.array([1, 2, 3, 4, 1])
    result = evaluate_rank(distmat, np.array([1]), g_pids, np.array([0]), np.ones(5, int), max_rank=4)
    assert result.mAP == pytest.approx(11 / 30)
    assert result.mINP == pytest.approx(2 / 5)
    assert np.array_equal(result.cmc, [0, 0, 1, 1])
    assert result.as_dict() == {"Rank-1": 0.0, "mAP": pytest.approx(11 / 30), "mINP": 0.4}


def test_equal_distances_keep_gallery_order():
    g_pids, g_cams = np.array([2, 1]), np.array([1, 1])
    tie = np.array([[0.5, 0.5]], np.float32)
    behind = evaluate_rank(tie, np.array([1]), g_pids, np.array([0]), g_cams)
    ahead = evaluate_rank(tie, np.array([1]), g_pids[::-1].copy(), np.array([0]), g_cams)
    assert behind.mAP == 0.5 and np.array_equal(behind.cmc, [0, 1])
    assert ahead.mAP == 1.0 and np.array_equal(ahead.cmc, [1, 1])


def test_skipped_queries_and_averages():
    distmat = np.array([[0.1, 0.9, 0.5], [0.2, 0.3, 0.1], [0.6, 0.1, 0.2]], np.float32)
    q_pids, q_cams = np.array([1, 2, 3]), np.array([0, 0, 0])
    g_pids, g_cams = np.array([1, 2, 3]), np.array([1, 0, 2])  # pid 2 only in the query's camera
    result = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams)
    assert result.num_valid_queries == 2
    assert np.isnan(result.query_ap[1]) and np.isnan(result.query_inp[1])
    # query 0: its match ranks first → AP 1; query 2: the pid-2 item (0.1) comes before its match → AP 1/2
    assert result.query_ap[[0, 2]] == pytest.approx([1.0, 0.5])
    assert result.mAP == pytest.approx(0.75)
    assert np.array_equal(result.cmc, [0.5, 1.0, 1.0])
    assert set(result.as_dict()) == {"Rank-1", "mAP", "mINP"}


def test_market_size_keys_and_ranges():
    rng = np.random.default_rng(3)
    case = random_case(rng, 50, 400, 30, 4, "random")
    result = evaluate_rank(*case)
    scores = result.as_dict()
    assert set(scores) == {"Rank-1", "Rank-5", "Rank-10", "mAP", "mINP"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert len(result.cmc) == 50 and np.all(np.diff(result.cmc) >= 0)


def test_float64_and_integer_distances():
    rng = np.random.default_rng(4)
    distmat, *labels = random_case(rng, 20, 60, 6, 3, "ties")
    assert_same_as_reference(distmat.astype(np.float64), *labels)
    assert_same_as_reference(distmat.astype(np.int32), *labels)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(distmat=np.zeros(4)), "distmat must be 2-D"),
        (dict(q_pids=np.array([1, 2, 3])), r"q_pids must have shape \(2,\).*distmat \(2, 4\).*got \(3,\)"),
        (dict(g_pids=np.array([1, 2])), r"g_pids must have shape \(4,\).*columns"),
        (dict(q_camids=np.array([[0, 0]])), r"q_camids must have shape \(2,\)"),
        (dict(g_camids=np.zeros(5, int)), r"g_camids must have shape \(4,\)"),
        (dict(g_pids=np.array([1.0, 2.0, 1.0, 2.0])), "g_pids must hold integers"),
        (dict(distmat=np.array([["a"] * 4] * 2)), "distmat must hold real numbers"),
        (dict(distmat=np.full((2, 4), np.nan)), "NaN"),
        (dict(distmat=np.array([[0.0, 1, 2, 3], [0, 1, np.nan, 3]])), "distmat contains NaN"),
        (dict(distmat=np.zeros((0, 4))), "at least one query"),
        (dict(max_rank=0), "max_rank must be a positive integer"),
        (dict(g_camids=np.zeros(4, int)), "no query has a valid match"),
    ],
)
def test_errors(change, message):
    args = dict(
        distmat=np.arange(8, dtype=np.float32).reshape(2, 4),
        q_pids=np.array([1, 2]),
        g_pids=np.array([1, 2, 1, 2]),
        q_camids=np.array([0, 0]),
        g_camids=np.array([1, 1, 0, 0]),
    )
    args.update(change)
    with pytest.raises(ValueError, match=message):
        evaluate_rank(**args)


# --- CUHK03 classic -----------------------------------------------------------------------------
def test_cuhk03_classic_equals_market_with_one_image_per_gallery_pid():
    rng = np.random.default_rng(5)
    checked = 0
    for _ in range(10):
        num_g = int(rng.integers(5, 40))
        g_pids = rng.permutation(num_g) + 1
        q_pids = rng.choice(g_pids, int(rng.integers(1, 15)))
        q_cams, g_cams = rng.integers(0, 2, len(q_pids)), rng.integers(0, 2, num_g)
        distmat = rng.random((len(q_pids), num_g), dtype=np.float32)
        if not has_valid_query(distmat, q_pids, g_pids, q_cams, g_cams):
            continue
        market = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=10)
        classic = evaluate_cuhk03_classic(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=10)
        np.testing.assert_allclose(classic.cmc, market.cmc, atol=1e-12)
        assert classic.mAP == pytest.approx(market.mAP, abs=1e-12)
        assert classic.num_valid_queries == market.num_valid_queries
        checked += 1
    assert checked >= 7


def exact_classic_expectation(distmat, q_pids, g_pids, q_cams, g_cams, cut):
    """Enumerate every single-shot gallery (one valid image per pid) with equal probability."""
    cmcs, aps = [], []
    for i in range(len(q_pids)):
        valid = ~((g_pids == q_pids[i]) & (g_cams == q_cams[i]))
        if not (g_pids[valid] == q_pids[i]).any():
            continue
        groups = [np.flatnonzero(valid & (g_pids == pid)) for pid in np.unique(g_pids[valid])]
        cmc_q, ap_q = [], []
        for pick in itertools.product(*groups):
            pick = np.sort(pick)  # gallery order, so equal distances break ties as a stable sort does
            order = pick[np.argsort(distmat[i, pick], kind="stable")]
            rank = int(np.flatnonzero(g_pids[order] == q_pids[i])[0])
            cmc_q.append(np.arange(cut) >= rank)
            ap_q.append(1.0 / (rank + 1))
        cmcs.append(np.mean(cmc_q, axis=0))
        aps.append(np.mean(ap_q))
    return np.mean(cmcs, axis=0), np.mean(aps)


def test_cuhk03_classic_converges_to_exact_expectation():
    distmat = np.array([[0.1, 0.4, 0.2, 0.5]], np.float32)
    one = np.array([1])
    classic = evaluate_cuhk03_classic(distmat, one, np.array([1, 1, 2, 2]), [0], [1, 1, 1, 1], repeats=4000)
    assert classic.cmc[0] == pytest.approx(0.75, abs=0.03)  # P(sampled match beats sampled miss)
    assert classic.mAP == pytest.approx(0.875, abs=0.02)
    assert classic.mINP == classic.mAP
    rng = np.random.default_rng(6)
    checked = 0
    for trial in range(4):
        g_pids = rng.integers(1, 4, 7)
        q_pids = rng.integers(1, 4, 3)
        q_cams, g_cams = rng.integers(0, 2, 3), rng.integers(0, 2, 7)
        distmat = rng.random((3, 7), dtype=np.float32)
        if trial % 2:
            distmat = np.round(distmat * 2)  # equal distances
        if not has_valid_query(distmat, q_pids, g_pids, q_cams, g_cams):
            continue
        cmc, m_ap = exact_classic_expectation(distmat, q_pids, g_pids, q_cams, g_cams, cut=5)
        classic = evaluate_cuhk03_classic(distmat, q_pids, g_pids, q_cams, g_cams, 5, repeats=3000)
        np.testing.assert_allclose(classic.cmc, cmc, atol=0.04)
        assert classic.mAP == pytest.approx(m_ap, abs=0.03)
        checked += 1
    assert checked >= 3


def test_cuhk03_classic_seeded_and_checked():
    rng = np.random.default_rng(8)
    case = random_case(rng, 30, 200, 20, 3, "random")
    a = evaluate_cuhk03_classic(*case, seed=1)
    b = evaluate_cuhk03_classic(*case, seed=1)
    c = evaluate_cuhk03_classic(*case, seed=2)
    assert np.array_equal(a.cmc, b.cmc) and a.mAP == b.mAP
    assert not (np.array_equal(a.cmc, c.cmc) and a.mAP == c.mAP)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        evaluate_cuhk03_classic(*case, repeats=0)
    with pytest.raises(ValueError, match="distmat contains NaN"):
        evaluate_cuhk03_classic(np.where(case[0] > 0.99, np.nan, case[0]), *case[1:])
    with pytest.raises(ValueError, match="g_pids must have shape"):
        evaluate_cuhk03_classic(case[0], case[1], case[2][:-1], case[3], case[4])


# --- distances ----------------------------------------------------------------------------------
def test_compute_distmat():
    rng = np.random.default_rng(9)
    qf, gf = rng.normal(size=(5, 8)).astype(np.float32), rng.normal(size=(7, 8)).astype(np.float32)
    cosine = compute_distmat(qf, gf)
    euclid = compute_distmat(qf, gf, "euclidean")
    assert cosine.dtype == euclid.dtype == np.float32 and cosine.shape == (5, 7)
    for i, j in itertools.product(range(5), range(7)):
        cos = qf[i] @ gf[j] / np.linalg.norm(qf[i]) / np.linalg.norm(gf[j])
        assert cosine[i, j] == pytest.approx(1 - cos, abs=1e-5)
        assert euclid[i, j] == pytest.approx(np.linalg.norm(qf[i] - gf[j]), abs=1e-4)
    assert compute_distmat(qf, qf, "euclidean").diagonal() == pytest.approx(0, abs=1e-3)
    self_cosine = compute_distmat(qf * 3.7, qf)
    assert self_cosine.min() >= 0 and self_cosine.diagonal() == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="same feature size"):
        compute_distmat(qf, gf[:, :4])
    with pytest.raises(ValueError, match="metric must be"):
        compute_distmat(qf, gf, "manhattan")
    with pytest.raises(ValueError, match="qf contains NaN"):
        compute_distmat(np.full((2, 8), np.nan), gf)


# --- re-ranking ---------------------------------------------------------------------------------
def clustered(seed, ids=40, dim=32, gallery_per_id=6, noise=1.2):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim))
    q_pids = np.arange(ids)
    g_pids = np.repeat(np.arange(ids), gallery_per_id)
    qf = centres[q_pids] + noise * rng.normal(size=(len(q_pids), dim))
    gf = centres[g_pids] + noise * rng.normal(size=(len(g_pids), dim))
    return qf, gf, q_pids, g_pids


def squared_distances(qf, gf):
    return compute_distmat(qf, gf, "euclidean") ** 2


def reference_re_ranking(q_g, q_q, g_g, k1, k2, lambda_value):
    """The paper's formulas with plain sets and loops (V normalised to sum 1, as documented)."""
    num_q = len(q_q)
    dist = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float64)
    dist /= dist.max()
    total = len(dist)
    ranked = [[p] + [i for i in np.argsort(dist[p], kind="stable") if i != p] for p in range(total)]

    def near(p, k):
        return set(ranked[p][: k + 1])

    def recip(p, k):
        return {i for i in near(p, k) if p in near(i, k)}

    vectors = np.zeros((total, total))
    for p in range(total):
        members = recip(p, k1)
        expanded = set(members)
        for c in members:
            half = recip(c, round(k1 / 2))
            if len(members & half) >= 2 / 3 * len(half):
                expanded |= half
        for i in expanded:
            vectors[p, i] = np.exp(-dist[p, i])
        vectors[p] /= vectors[p].sum()
    vectors = np.array([vectors[ranked[p][:k2]].mean(axis=0) for p in range(total)])
    out = np.zeros(q_g.shape)
    for p, g in itertools.product(range(num_q), range(len(g_g))):
        v, w = vectors[p], vectors[num_q + g]
        jaccard = 1 - np.minimum(v, w).sum() / np.maximum(v, w).sum()
        out[p, g] = (1 - lambda_value) * jaccard + lambda_value * dist[p, num_q + g]
    return out


@pytest.mark.parametrize("ties", [False, True])
def test_re_ranking_matches_reference(ties):
    rng = np.random.default_rng(10 + ties)
    for k1, k2, lam in [(6, 3, 0.3), (4, 1, 0.0), (9, 5, 0.5)]:
        points = rng.normal(size=(26, 3)) + np.repeat(rng.normal(size=(5, 3)) * 2, [6, 5, 5, 5, 5], axis=0)
        d = squared_distances(points, points)
        if ties:
            d = np.round(d)  # many equal distances: neighbour lists follow the stable order
        d = ((d + d.T) / 2).astype(np.float32)
        np.fill_diagonal(d, 0)
        q, g = slice(0, 8), slice(8, None)
        expected = reference_re_ranking(d[q, g], d[q, q], d[g, g], k1, k2, lam)
        got = re_ranking(d[q, g], d[q, q], d[g, g], k1=k1, k2=k2, lambda_value=lam)
        np.testing.assert_allclose(got, expected, atol=2e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_re_ranking_improves_map_on_clustered_features(seed):
    qf, gf, q_pids, g_pids = clustered(seed)
    q_cams, g_cams = np.zeros(len(q_pids), int), np.ones(len(g_pids), int)
    q_g = squared_distances(qf, gf)
    before = evaluate_rank(q_g, q_pids, g_pids, q_cams, g_cams)
    new = re_ranking(q_g, squared_distances(qf, qf), squared_distances(gf, gf))
    assert new.shape == q_g.shape and new.dtype == np.float32
    after = evaluate_rank(new, q_pids, g_pids, q_cams, g_cams)
    assert after.mAP > before.mAP + 0.05


def test_re_ranking_symmetry_scale_and_lambda():
    _, gf, _, _ = clustered(3, ids=10, gallery_per_id=4)
    d = squared_distances(gf, gf)
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0)
    same = re_ranking(d, d, d)
    np.testing.assert_allclose(same, same.T, atol=1e-6)
    np.testing.assert_allclose(re_ranking(d * 7, d * 7, d * 7), same, atol=1e-6)  # scale-free
    plain = re_ranking(d, d, d, lambda_value=1.0)
    np.testing.assert_allclose(plain, d / d.max(), atol=1e-6)
    assert np.all((same >= 0) & (same <= 1 + 1e-6))


def test_re_ranking_separates_far_clusters():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(6, 4))
    b = rng.normal(size=(6, 4)) + 100.0  # no neighbour crosses between the clusters for k1 <= 5
    qf, gf = np.vstack([a[:2], b[:2]]), np.vstack([a[2:], b[2:]])
    q_g = squared_distances(qf, gf)
    q_q, g_g = squared_distances(qf, qf), squared_distances(gf, gf)
    jaccard = re_ranking(q_g, q_q, g_g, k1=4, k2=2, lambda_value=0.0)
    same_cluster = np.add.outer([0, 0, 1, 1], -np.array([0] * 4 + [1] * 4)) == 0
    assert np.all(jaccard[~same_cluster] == pytest.approx(1.0, abs=1e-6))
    assert np.all(jaccard[same_cluster] < 1.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(q_q_dist=np.zeros((3, 3))), r"q_q_dist must be \(2, 2\)"),
        (dict(k1=30), "need at least 31"),
        (dict(k1=0), "k1 and k2 must be >= 1"),
        (dict(lambda_value=1.5), "lambda_value must be in"),
        (dict(q_g_dist=-np.ones((2, 5))), "non-negative"),
        (dict(g_g_dist=np.full((5, 5), np.inf)), "g_g_dist contains NaN or inf"),
    ],
)
def test_re_ranking_errors(kwargs, message):
    args = dict(q_g_dist=np.ones((2, 5)), q_q_dist=np.zeros((2, 2)), g_g_dist=np.zeros((5, 5)), k1=2, k2=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        re_ranking(**args)
