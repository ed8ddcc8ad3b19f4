"""Ray job: fine-tune + evaluate every planned (setting, fraction, init, seed) run as parallel Ray tasks.

    python -m ray_jobs.finetune_eval --config FINETUNE.yaml --out DIR [--set inits.diffperson=.../backbone.safetensors]
"""
from __future__ import annotations

from pathlib import Path

from ray_jobs._common import job_parser


def main(argv: list[str] | None = None) -> int:
    p = job_parser("finetune_eval", __doc__, "FinetuneEvalConfig YAML",
                   "outputs/finetune",
                   "writes results.csv/.md/.png and results_runs.csv")
    p.add_argument("--gpus-per-run", type=float, default=0, help="GPUs per fine-tune task (0 on CPU clusters)")
    args = p.parse_args(argv)

    from diffreid.distributed.cluster import init_ray
    from diffreid.distributed.finetune import run_finetune_eval_ray
    from diffreid.reid.finetune import FinetuneEvalConfig

    cfg = FinetuneEvalConfig.load(args.config, overrides=args.set)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(out / "config.yaml")
    init_ray(args.address)
    run_finetune_eval_ray(cfg, out, num_gpus=args.gpus_per_run)
    print(f"results: {out / 'results.md'}\n")
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    from ray_jobs._common import run_job

    raise SystemExit(run_job(main, "finetune_eval"))
