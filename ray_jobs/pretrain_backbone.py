"""Ray job: the `pretrain` stage on the connected cluster (`ray job submit -- python -m ray_jobs.pretrain_backbone --help`).

Generated from the stage registry (diffreid/stages.py): the same config, checks and library call as
`diffreid pretrain --ray`; re-submitting resumes.
"""
from __future__ import annotations

from diffreid.stages import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main("pretrain", argv)


if __name__ == "__main__":
    raise SystemExit(main())
