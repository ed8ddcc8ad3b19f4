"""Ray job: the `run_all` stage on the connected cluster, as `diffreid run-all --ray` (diffreid/stages.py)."""
from diffreid.stages import job_main

if __name__ == "__main__":
    raise SystemExit(job_main("run_all"))
