"""Ray job: build a Diff-Person dataset on the connected cluster (resumable: re-submit to finish a run).

    python -m ray_jobs.build_diff_person --config configs/toy-ray.yaml --out /shared/diff-person [--set k=v ...]
"""
from __future__ import annotations


from ray_jobs._common import job_parser


def main(argv: list[str] | None = None) -> int:
    p = job_parser("build_diff_person", __doc__, "BuildConfig YAML, optionally with a `ray:` section",
                   "outputs/diff-person",
                   "output folder; on a multi-node cluster a path every node sees")
    args = p.parse_args(argv)

    from diffreid.distributed.build import RayBuildJobConfig, build_diff_person_ray
    from diffreid.distributed.cluster import init_ray

    cfg = RayBuildJobConfig.load(args.config, overrides=args.set)
    init_ray(args.address)
    report = build_diff_person_ray(cfg, args.out)
    print(f"diff-person: {report.parent}\nreport:      {report}")
    return 0


if __name__ == "__main__":
    from ray_jobs._common import run_job

    raise SystemExit(run_job(main, "build_diff_person"))
