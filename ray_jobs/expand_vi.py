"""Ray job: DiVE VI expansion as one Ray task (resumable: re-submit to finish a run).

    python -m ray_jobs.expand_vi --config configs/toy-vi.yaml --out /shared/vi-expanded [--set k=v ...]

The task asks for the config's ``ray.num_cpus`` / ``ray.num_gpus`` and runs ``diffreid.vi.expand_vi``, the same
function as ``diffreid vi-expand``; a retried task continues from the committed identities.
"""
from __future__ import annotations

import json


def expand_task(config: dict, out: str) -> dict:
    from diffreid.vi import VIExpandConfig, expand_vi

    return expand_vi(VIExpandConfig.model_validate(config), out).summary

from ray_jobs._common import job_parser


def main(argv: list[str] | None = None) -> int:
    p = job_parser("expand_vi", __doc__, "VIExpandConfig YAML (its `ray:` section sizes the task)",
                   "outputs/vi-expanded",
                   "output folder; on a multi-node cluster a path every node sees")
    args = p.parse_args(argv)

    import os

    import ray

    from diffreid.distributed.cluster import init_ray
    from diffreid.vi import VIExpandConfig

    cfg = VIExpandConfig.load(args.config, overrides=args.set)
    init_ray(args.address)
    task = ray.remote(num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus, max_retries=2)(expand_task)
    summary = ray.get(task.remote(cfg.model_dump(mode="json"), os.path.abspath(args.out)))
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    from ray_jobs._common import run_job

    raise SystemExit(run_job(main, "expand_vi"))
