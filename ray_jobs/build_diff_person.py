"""Ray job: the `build` stage on the connected cluster, as `diffreid build --ray` (diffreid/stages.py)."""
from diffreid.stages import job_main

if __name__ == "__main__":
    raise SystemExit(job_main("build"))
