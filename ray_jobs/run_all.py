"""Ray job: the `run_all` stage on the connected cluster (`ray job submit -- python -m ray_jobs.run_all --help`).

Generated from the stage registry (diffreid/stages.py): the same config, checks and library call as
`diffreid run-all --ray`; re-submitting resumes.
"""
from __future__ import annotations

from diffreid.stages import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main("run_all", argv)


if __name__ == "__main__":
    raise SystemExit(main())
