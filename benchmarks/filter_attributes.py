"""Does the Re-ID confidence filter select generated images with the identity's attributes right? On a finished
toy-world build: all-four attribute agreement (toy captioner vs ground truth) of kept vs dropped images, pooled
and within each identity, and at other thresholds of the same scores.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/filter_attributes.py outputs/demo-32/diff-person

Pooled figures weight identities by how many images the filter kept of them; the within-identity figures
compare kept and dropped images of the same person (mean over identities with both).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _headline import headline  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build", help="a Diff-Person build folder of the toy world")
    args = ap.parse_args()

    from diffreid.diffperson.fidelity import (attribute_hits, generated_images, load_fidelity_config,
                                              predict_attributes, source_identities)
    from diffreid.generation.toy_captioner import ToyCaptioner
    from diffreid.models.assets import resolve_model_path

    root = Path(args.build).resolve()
    cfg = load_fidelity_config(root)
    df = generated_images(root, cfg)
    df = df[df["file"] != ""].reset_index(drop=True)
    identities = {int(p): (str(d), int(s)) for p, d, s in
                  df[["pid", "source_dataset", "source_pid"]].drop_duplicates().itertuples(index=False)}
    truth = source_identities(root, identities).truth
    if not truth:
        raise SystemExit(f"{root}: no ground-truth attributes (not a toy-world build)")
    captioner = ToyCaptioner(resolve_model_path(cfg.captioner), runtime=cfg.reader.runtime)
    hits = attribute_hits(predict_attributes(captioner, [root / f for f in df["file"]]),
                          [truth[int(p)] for p in df["pid"]])
    df["all_four"] = hits["all_four"].astype(float).to_numpy()
    score = df["score_reid_ctf"].to_numpy()
    kept = df["kept"].astype(bool).to_numpy()

    def pooled(mask):
        return agree[mask].mean(), agree[~mask].mean()

    agree = df["all_four"].to_numpy()

    def within(mask):
        pairs = []
        for idx in df.groupby("pid").indices.values():
            m, a = mask[idx], agree[idx]
            if m.any() and (~m).any():
                pairs.append((a[m].mean(), a[~m].mean()))
        return np.mean(pairs, axis=0), len(pairs)

    print(f"\n### Filter vs attributes: {root} ({len(df)} generated images, {len(identities)} identities)\n")
    print(f"correlation of the Re-ID CTF score with all-four agreement: {np.corrcoef(score, agree)[0, 1]:+.3f}")
    per_id = df.groupby("pid")["all_four"].mean()
    print(f"all four per identity: min {per_id.min():.0%}, median {per_id.median():.0%}, max {per_id.max():.0%}\n")
    print("| threshold | kept | all four kept / dropped (pooled) | ratio | within identities | ratio |")
    print("|---|---:|---|---:|---|---:|")
    rows = [("build's own", kept)] + [(f"{q:.0%} dropped (score {np.quantile(score, q):.3f})",
                                       score >= np.quantile(score, q)) for q in (0.1, 0.5, 0.7, 0.9)]
    for name, mask in rows:
        (k, d), ((wk, wd), n) = pooled(mask), within(mask)
        print(f"| {name} | {int(mask.sum())} | {k:.1%} / {d:.1%} | {k / d:.2f} | {wk:.1%} / {wd:.1%} ({n} ids) "
              f"| {wk / wd:.2f} |")
    (k, d), ((wk, wd), _) = pooled(kept), within(kept)
    headline("filter: all four kept / dropped, pooled", round(k / d, 2), "x")
    headline("filter: all four kept / dropped, within identities", round(wk / wd, 2), "x")


if __name__ == "__main__":
    main()
