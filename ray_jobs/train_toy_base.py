"""Train the toy world's base models: the text-to-image pipeline and the pixel captioner (seeded, CPU).

    python -m ray_jobs.train_toy_base [--part captioner|base|all] [--out diffreid/assets] [--set base.unet_steps=...]

Writes OUT/toy-captioner (attribute CNN, ~1 MB) and OUT/toy-base (diffusers pipeline folder, ~18 MB), the
models `diffreid demo` ships with. WORK keeps resumable checkpoints, the loss log and sample grids: an
interrupted run started again continues where it stopped. Runs in-process (no Ray needed); as a Ray job it
runs on the node `ray job submit` puts it on.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pydantic import Field

from diffreid.config import StageConfig
from diffreid.generation.toy_captioner import ToyCaptionerTrainConfig
from diffreid.models.toybase import ToyBaseConfig


class ToyModelsConfig(StageConfig):
    base: ToyBaseConfig = Field(default_factory=ToyBaseConfig, description="text-to-image base model")
    captioner: ToyCaptionerTrainConfig = Field(default_factory=ToyCaptionerTrainConfig,
                                               description="attribute captioner, trained on the same pool")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.train_toy_base", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="ToyModelsConfig YAML (default: the shipped recipe)")
    p.add_argument("--part", choices=("captioner", "base", "all"), default="all")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "diffreid" / "assets"),
                   help="writes OUT/toy-captioner and OUT/toy-base (default: the package's assets)")
    p.add_argument("--work", default="outputs/toy-models-work", help="checkpoints, loss log, sample grids")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. base.unet_steps=2000")
    args = p.parse_args(argv)

    import torch

    from diffreid.generation.toy_captioner import ToyCaptioner, train_toy_captioner
    from diffreid.io import atomic_write_json
    from diffreid.models.toybase import render_pool, train_toy_base

    cfg = ToyModelsConfig.load(args.config, overrides=args.set)
    out, work = Path(args.out), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(work / "config.yaml")
    if cfg.base.threads:
        torch.set_num_threads(cfg.base.threads)
    captioner_dir = out / "toy-captioner"
    pool = render_pool(cfg.base.pool)  # one pool, disjoint from every evaluation identity, for both models
    if args.part in ("captioner", "all"):
        result = train_toy_captioner(cfg.captioner, *pool, captioner_dir)
        print(json.dumps(result, indent=1))
    if args.part in ("base", "all"):
        captioner = ToyCaptioner(captioner_dir) if captioner_dir.is_dir() else None
        result = train_toy_base(cfg.base, out / "toy-base", work / "base", captioner=captioner, pool=pool)
        atomic_write_json(work / "base" / "result.json", result)
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    from ray_jobs._common import run_job

    raise SystemExit(run_job(main, "train_toy_base"))
