"""DiVE's claim measured: a VI-ReID model trained on the real VI identities vs the same plus the expanded
identities (their real visible images + kept generated infrared images), and a control with the expanded
identities' visible images only, each over several seeds on the VI dataset's own test protocol."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

GAIN_DIR = "gain"
COLUMNS = ("sysu_all mAP", "sysu_all Rank-1", "sysu_indoor mAP", "sysu_indoor Rank-1")


def vi_gain(expansion: str | Path, seeds: Sequence[int] = (0, 1, 2), epochs: int | None = None,
            progress: bool = False) -> dict[str, dict]:
    """Rows ``{name: {"images": n, "ids": k, metric: [one value per seed]}}`` for (a) real, (b) + expanded,
    (c) + expanded visible only, trained with the expansion's scorer recipe. Models are kept under
    ``expansion/gain/``, so a re-run only evaluates."""
    from diffreid.config import RESOLVED_CONFIG
    from diffreid.data import load_dataset
    from diffreid.vi.config import VIExpandConfig

    out = Path(expansion)
    cfg = VIExpandConfig.load(out / RESOLVED_CONFIG)
    summary = json.loads((out / "summary.json").read_text())
    new_pids = set(range(summary["new_pids"][0], summary["new_pids"][1] + 1))
    real = load_dataset(cfg.vi_dataset, cfg.vi_root, **cfg.vi_options).train
    expanded = load_dataset(cfg.vi_dataset, out, **cfg.vi_options).train
    sets = {
        "(a) real VI identities": real,
        "(b) + expanded identities (real RGB + generated IR)": expanded,
        "(c) + expanded identities, real RGB only (control)":
            [r for r in expanded if not (r.pid in new_pids and r.modality == "ir")],
    }
    train = cfg.scorer.train if epochs is None else cfg.scorer.train.model_copy(update={"epochs": epochs})
    rows: dict[str, dict] = {}
    for key, (name, records) in zip("abc", sets.items()):
        rows[name] = {"images": len(records), "ids": len({r.pid for r in records}),
                      "generated_ir": sum(r.pid in new_pids and r.modality == "ir" for r in records),
                      **scores_over_seeds(cfg, train, records, lambda seed: out / GAIN_DIR / f"{key}-e{train.epochs}-s{seed}",
                                          seeds, progress)}
    return rows


def scores_over_seeds(cfg, train, records, folder_of_seed, seeds: Sequence[int], progress: bool = False,
                      vi_root=None) -> dict[str, list[float]]:
    """Train the scorer recipe ``train`` on ``records`` once per seed (kept in ``folder_of_seed(seed)``, so a
    re-run only evaluates) and evaluate each on the VI dataset's test protocol: ``{"<mode> <metric>": [..]}``."""
    from diffreid.vi.scorer import evaluate_scorer, train_or_load_scorer

    scores: dict[str, list[float]] = {}
    for seed in seeds:
        seeded = train.model_copy(update={"runtime": train.runtime.model_copy(update={"seed": seed})})
        model_dir, _ = train_or_load_scorer(cfg.scorer.model_copy(update={"train": seeded, "model_dir": None}),
                                            records, folder_of_seed(seed), progress=progress)
        for mode, m in evaluate_scorer(model_dir, cfg.vi_dataset, vi_root or cfg.vi_root, cfg.vi_options,
                                       cfg.runtime, cfg.scorer.eval_trials, seed).items():
            for metric in ("mAP", "Rank-1"):
                scores.setdefault(f"{mode} {metric}", []).append(float(m[metric]))
    return scores


def gain_table(rows: dict[str, dict]) -> str:
    """The rows as a markdown table, mean ± std over seeds."""
    cols = [c for c in COLUMNS if c in next(iter(rows.values()))] or sorted(
        k for k, v in next(iter(rows.values())).items() if isinstance(v, list))
    lines = ["| training set | ids | images | " + " | ".join(cols) + " |", "|---|---|---|" + "---|" * len(cols)]
    for name, row in rows.items():
        cells = [f"{np.mean(row[c]):.3f} ± {np.std(row[c]):.3f}" for c in cols]
        lines.append(f"| {name} | {row['ids']} | {row['images']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
