"""Speed of `evaluate_rank` on random distance matrices up to Market-1501 size, checked against the
per-query reference loop of tests/test_metrics.py; plus CUHK03 classic, and k-reciprocal re-ranking on
clustered features.

    python benchmarks/bench_eval.py [--repeats 3] [--check-queries 200]

Prints Markdown tables. Target (issue 2): Market size 3,368 × 15,913 float32 in under 1.0 s.
"stable argsort alone" is the first step of the usual per-row implementations, shown for scale.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _headline import headline  # noqa: E402
from test_metrics import reference_rank  # noqa: E402  (the oracle lives with the tests)

from diffreid.reid.metrics import (  # noqa: E402
    compute_distmat,
    evaluate_cuhk03_classic,
    evaluate_rank,
    re_ranking,
)

SIZES = [(300, 2_000, 100), (1_400, 5_332, 700), (3_368, 15_913, 751)]  # queries, gallery, ids
DISTRACTOR_SHARE = 2_793 / 15_913  # Market-1501's share of pid-0 gallery images


def market_like(num_q, num_g, num_ids, rng):
    num_distractors = int(round(DISTRACTOR_SHARE * num_g))
    identities = rng.integers(1, num_ids + 1, num_g - num_distractors)
    g_pids = np.concatenate([np.zeros(num_distractors, int), identities])
    q_pids = rng.integers(1, num_ids + 1, num_q)
    q_camids, g_camids = rng.integers(0, 6, num_q), rng.integers(0, 6, num_g)
    distmat = rng.random((num_q, num_g), dtype=np.float32)
    return distmat, q_pids, g_pids, q_camids, g_camids


def best_of(repeats, fn):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def eval_rows(repeats, check_queries, rng):
    lines = [
        "| size (query × gallery) | 1 thread (s) | default threads (s) | stable argsort alone (s) "
        "| reference loop (s, extrapolated) | checked queries | CMC and skips equal | max abs ΔAP / ΔINP |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for num_q, num_g, num_ids in SIZES:
        case = market_like(num_q, num_g, num_ids, rng)
        one, _ = best_of(repeats, lambda: evaluate_rank(*case, num_threads=1))
        default, full = best_of(repeats, lambda: evaluate_rank(*case))
        argsort, _ = best_of(1, lambda: np.argsort(case[0], axis=1, kind="stable"))
        subset = np.sort(rng.choice(num_q, min(check_queries, num_q), replace=False))
        sub_case = (case[0][subset], case[1][subset], case[2], case[3][subset], case[4])
        ref_seconds, (ref_cmc, ref_ap, ref_inp) = best_of(1, lambda: reference_rank(*sub_case))
        cmc_equal = np.array_equal(evaluate_rank(*sub_case).cmc, ref_cmc)
        valid = ~np.isnan(ref_ap)
        same_skips = np.array_equal(valid, ~np.isnan(full.query_ap[subset]))
        d_ap = np.abs(full.query_ap[subset][valid] - ref_ap[valid]).max()
        d_inp = np.abs(full.query_inp[subset][valid] - ref_inp[valid]).max()
        if (num_q, num_g) == SIZES[-1][:2]:
            headline("evaluate_rank, Market size (3,368 x 15,913), 1 thread", round(one, 3), "s", "target < 1 s")
        lines.append(
            f"| {num_q:,} × {num_g:,} | {one:.3f} | {default:.3f} | {argsort:.2f} "
            f"| {ref_seconds * num_q / len(subset):.1f} "
            f"| {len(subset)} | {cmc_equal and same_skips} | {d_ap:.1e} / {d_inp:.1e} |"
        )
    return lines


def cuhk03_rows(rng):
    lines = ["| CUHK03 classic (query × gallery, 10 repeats) | seconds |", "|---|---|"]
    case = market_like(1_400, 5_332, 700, rng)
    seconds, _ = best_of(1, lambda: evaluate_cuhk03_classic(*case))
    lines.append(f"| 1,400 × 5,332 | {seconds:.2f} |")
    return lines


def rerank_rows(rng):
    lines = ["| re-ranking (query × gallery) | seconds | mAP before | mAP after |", "|---|---|---|---|"]
    for ids, per_id in [(50, 8), (200, 10)]:
        centres = rng.normal(size=(ids, 64))
        q_pids, g_pids = np.arange(ids), np.repeat(np.arange(ids), per_id)
        qf = centres[q_pids] + 1.3 * rng.normal(size=(ids, 64))
        gf = centres[g_pids] + 1.3 * rng.normal(size=(len(g_pids), 64))
        q_cams, g_cams = np.zeros(ids, int), np.ones(len(g_pids), int)
        q_g = compute_distmat(qf, gf)
        before = evaluate_rank(q_g, q_pids, g_pids, q_cams, g_cams).mAP
        seconds, new = best_of(1, lambda: re_ranking(q_g, compute_distmat(qf, qf), compute_distmat(gf, gf)))
        after = evaluate_rank(new, q_pids, g_pids, q_cams, g_cams).mAP
        lines.append(f"| {ids} × {len(g_pids)} | {seconds:.2f} | {before:.3f} | {after:.3f} |")
    return lines


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per size (best is reported)")
    parser.add_argument("--check-queries", type=int, default=200, help="queries compared with the reference")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"CPU cores: {os.cpu_count()}, load average at start: {os.getloadavg()[0]:.1f}\n")
    print("\n".join(eval_rows(args.repeats, args.check_queries, rng)))
    print()
    print("\n".join(cuhk03_rows(rng)))
    print()
    print("\n".join(rerank_rows(rng)))
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
