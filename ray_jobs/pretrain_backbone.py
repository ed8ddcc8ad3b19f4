"""Ray job: the `pretrain` stage on the connected cluster, as `diffreid pretrain --ray` (diffreid/stages.py)."""
from diffreid.stages import job_main

if __name__ == "__main__":
    raise SystemExit(job_main("pretrain"))
