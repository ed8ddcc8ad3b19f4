"""Re-train the shipped toy models: the attribute captioner and the text-to-image base (seeded, CPU, resumable)."""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from diffreid.config import RESOLVED_CONFIG, StageConfig
from diffreid.generation.toy_captioner import ToyCaptionerTrainConfig
from diffreid.toy.base import ToyBaseConfig

ASSETS = Path(__file__).resolve().parent.parent / "assets"


class ToyModelsConfig(StageConfig):
    base: ToyBaseConfig = Field(default_factory=ToyBaseConfig, description="text-to-image base model")
    captioner: ToyCaptionerTrainConfig = Field(default_factory=ToyCaptionerTrainConfig,
                                               description="attribute captioner, trained on the base's VAE pool")


def train_toy_models(cfg: ToyModelsConfig, out_dir: str | Path = ASSETS, work_dir: str | Path = "outputs/toy-models-work",
                     part: str = "all") -> dict:
    """Write OUT/toy-captioner and/or OUT/toy-base (``part``: captioner, base or all); WORK keeps resumable
    checkpoints, the loss log and sample grids. Returns each part's result."""
    import torch

    from diffreid.generation.toy_captioner import ToyCaptioner, train_toy_captioner
    from diffreid.io import atomic_write_json
    from diffreid.toy.base import render_pool, train_toy_base

    out, work = Path(out_dir), Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(work / RESOLVED_CONFIG)
    if cfg.base.threads:
        torch.set_num_threads(cfg.base.threads)
    captioner_dir = out / "toy-captioner"
    pool = render_pool(cfg.base.pool, with_masks=True)  # one pool, disjoint from evaluation ids, for both models
    results = {}
    if part in ("captioner", "all"):
        results["captioner"] = train_toy_captioner(cfg.captioner, *pool[:3], captioner_dir)
        print(json.dumps(results["captioner"], indent=1))
    if part in ("base", "all"):
        captioner = ToyCaptioner(captioner_dir) if captioner_dir.is_dir() else None
        results["base"] = train_toy_base(cfg.base, out / "toy-base", work / "base", captioner=captioner, pool=pool)
        atomic_write_json(work / "base" / "result.json", results["base"])
        print(json.dumps(results["base"], indent=1))
    return results
