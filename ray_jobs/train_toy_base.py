"""Train the toy world's base models: the text-to-image pipeline and the pixel captioner (seeded, CPU).

    python -m ray_jobs.train_toy_base [--part captioner|base|all] [--out diffreid/assets] [--set base.unet_steps=...]

Writes OUT/toy-captioner (attribute CNN, ~1 MB) and OUT/toy-base (diffusers pipeline folder), the models
`diffreid demo` ships with (``diffreid.toy.train_toy_models``). WORK keeps resumable checkpoints, the loss log
and sample grids: an interrupted run started again continues where it stopped. Runs in-process (no Ray needed);
as a Ray job it runs on the node `ray job submit` puts it on.
"""
from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    from diffreid.toy.models import ASSETS

    p = argparse.ArgumentParser(prog="python -m ray_jobs.train_toy_base", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="ToyModelsConfig YAML (default: the shipped recipe)")
    p.add_argument("--part", choices=("captioner", "base", "all"), default="all")
    p.add_argument("--out", default=str(ASSETS), help="writes OUT/toy-captioner and OUT/toy-base (default: the "
                   "package's assets)")
    p.add_argument("--work", default="outputs/toy-models-work", help="checkpoints, loss log, sample grids")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. base.unet_steps=2000")
    args = p.parse_args(argv)

    from diffreid.toy import ToyModelsConfig, train_toy_models

    train_toy_models(ToyModelsConfig.load(args.config, overrides=args.set), args.out, args.work, args.part)
    return 0


if __name__ == "__main__":
    from ray_jobs._common import run_job

    raise SystemExit(run_job(main, "train_toy_base"))
