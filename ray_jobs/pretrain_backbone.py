"""Ray job: pre-train a Re-ID backbone on a Diff-Person folder with Ray Train (DDP workers from `ray:`).

    python -m ray_jobs.pretrain_backbone --config configs/toy-pretrain.yaml --data DIFF_PERSON --out DIR
"""
from __future__ import annotations

from pathlib import Path

from ray_jobs._common import job_parser


def main(argv: list[str] | None = None) -> int:
    p = job_parser("pretrain_backbone", __doc__, "PretrainConfig YAML (its `ray:` section sizes Ray Train)",
                   "outputs/pretrain",
                   "writes OUT/backbone.safetensors and OUT/recipe.json")
    p.add_argument("--data", required=True, help="Diff-Person or any Market-layout folder (its train split)")
    args = p.parse_args(argv)

    from diffreid.data import load_dataset
    from diffreid.distributed.cluster import init_ray
    from diffreid.distributed.train import pretrain_with_ray
    from diffreid.reid.pretrain import PretrainConfig

    cfg = PretrainConfig.load(args.config, overrides=args.set)
    records = load_dataset("market_layout", args.data, splits=("train",)).train
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(out / "config.yaml")
    init_ray(args.address)
    pretrain_with_ray(cfg, records, out)
    print(f"backbone: {out / 'backbone.safetensors'}\nrecipe:   {out / 'recipe.json'}")
    return 0


if __name__ == "__main__":
    from ray_jobs._common import run_job

    raise SystemExit(run_job(main, "pretrain_backbone"))
