"""Ray job: the `reproduce` stage on the connected cluster (`ray job submit -- python -m ray_jobs.reproduce --help`).

Generated from the stage registry (diffreid/stages.py): the same config, checks and library call as
`diffreid reproduce --ray`; re-submitting resumes.
"""
from __future__ import annotations

from diffreid.stages import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main("reproduce", argv)


if __name__ == "__main__":
    raise SystemExit(main())
