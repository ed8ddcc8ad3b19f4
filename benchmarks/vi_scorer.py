"""The cross-modality scorer on the toy VI world: plain BoT vs BoT with the VI-ReID tricks.

    python benchmarks/vi_scorer.py [--config configs/toy-vi.yaml] [--epochs 20] [--seeds 0 1 2] [--set K=V ..]

Renders the config's toy SYSU-MM01 world, trains the scorer (the library's ``train_or_load_scorer``) once per
variant and seed, and prints SYSU-MM01 all-search / indoor-search mAP and Rank-1 (10 random single-shot
galleries) as a markdown table (mean ± std over seeds). Models are kept under --out, so a re-run only evaluates.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

VARIANTS: dict[str, dict] = {
    "plain BoT (both modalities, one ID head)": {},
    "+ modality-balanced PK": {"modality_balanced": True},
    "+ grey/channel augmentation": {"modality_balanced": True, "visible_grey_prob": 0.3,
                                    "visible_channel_prob": 0.3},
    "+ cross-modality triplet (the scorer's default)": {"modality_balanced": True, "visible_grey_prob": 0.3,
                                                        "visible_channel_prob": 0.3,
                                                        "cross_modality_triplet_weight": 1.0},
}


def main() -> None:
    from diffreid.data import load_dataset
    from diffreid.data.toyworld import render_world
    from diffreid.vi.config import VIExpandConfig
    from diffreid.vi.expand import vi_train_records
    from diffreid.vi.gain import scores_over_seeds

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/toy-vi.yaml")
    ap.add_argument("--epochs", type=int, default=None, help="default: the config's scorer epochs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--variants", nargs="*", default=None, help="substrings of variant names to run")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. "
                    "vi_toyworld.ids_train=48")
    ap.add_argument("--out", default="outputs/bench-vi-scorer")
    args = ap.parse_args()

    cfg = VIExpandConfig.load(args.config, overrides=args.set)
    out = Path(args.out)
    world = render_world(cfg.vi_toyworld, out / "world", progress=False)
    vi = load_dataset("sysu_mm01", world)
    test = load_dataset("sysu_mm01", world, mode="all", gallery_shots=None)
    train = vi_train_records(vi, None)
    base = cfg.scorer.train.model_dump()
    if args.epochs:
        base["epochs"] = args.epochs
    plain = {k: False if isinstance(v, bool) else 0.0 for k, v in VARIANTS[list(VARIANTS)[-1]].items()}
    print(f"toy SYSU world: {len({r.pid for r in train})} train ids, {len(train)} train images, "
          f"{len({r.pid for r in test.query})} test ids; scorer {base['model']['backbone']}, {base['epochs']} epochs")
    rows = []
    for name, update in VARIANTS.items():
        if args.variants and not any(v in name for v in args.variants):
            continue
        train_cfg = type(cfg.scorer.train).model_validate({**base, **plain, **update})
        scores = scores_over_seeds(cfg, train_cfg, train, lambda seed: out / "models" / (
            f"{list(VARIANTS).index(name)}-e{base['epochs']}-s{seed}"), args.seeds, vi_root=world)
        rows.append((name, scores))
    cols = ["sysu_all mAP", "sysu_all Rank-1", "sysu_indoor mAP", "sysu_indoor Rank-1",
            "regdb_visible_to_thermal mAP", "regdb_thermal_to_visible mAP"]
    print("| scorer | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, scores in rows:
        cells = [f"{np.mean(scores[c]):.3f} ± {np.std(scores[c]):.3f}" for c in cols]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
