"""Ray job: the `vi_expand` stage on the connected cluster, as `diffreid vi-expand --ray` (diffreid/stages.py)."""
from diffreid.stages import job_main

if __name__ == "__main__":
    raise SystemExit(job_main("vi_expand"))
