"""Ray job: the miniature reproduction of the paper's Tables 2-3 in the toy world (see diffreid/study.py).

    python -m ray_jobs.reproduce --config configs/toy-reproduce.yaml --out outputs/reproduce [--set KEY=VALUE]

Builds Diff-Person-toy variants from source S and pre-trains backbones in the driver (one CPU process each, as
on a laptop); the fine-tune runs on target T fan out as Ray tasks. Writes OUT/RESULTS.md; every step resumes.
"""
from __future__ import annotations

from ray_jobs._common import job_parser


def main(argv: list[str] | None = None) -> int:
    p = job_parser("reproduce", __doc__, "StudyConfig YAML", "outputs/reproduce",
                   "OUT/RESULTS.md, OUT/builds, OUT/pretrain, OUT/finetune")
    p.add_argument("--no-ray", action="store_true", help="run the fine-tunes in this process too")
    args = p.parse_args(argv)

    from diffreid.study import StudyConfig, run_study

    cfg = StudyConfig.load(args.config, overrides=args.set)
    runner = None
    if not args.no_ray:
        from diffreid.distributed.cluster import init_ray
        from diffreid.distributed.finetune import run_finetune_eval_ray

        init_ray(args.address)
        runner = run_finetune_eval_ray
    run_study(cfg, args.out, finetune_runner=runner)
    return 0


if __name__ == "__main__":
    from ray_jobs._common import run_job

    raise SystemExit(run_job(main, "reproduce"))
