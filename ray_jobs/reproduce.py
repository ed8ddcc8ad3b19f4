"""Ray job: the `reproduce` stage on the connected cluster, as `diffreid reproduce --ray` (diffreid/stages.py)."""
from diffreid.stages import job_main

if __name__ == "__main__":
    raise SystemExit(job_main("reproduce"))
