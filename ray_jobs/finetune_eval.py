"""Ray job: the `finetune_eval` stage on the connected cluster, as `diffreid finetune-eval --ray` (diffreid/stages.py)."""
from diffreid.stages import job_main

if __name__ == "__main__":
    raise SystemExit(job_main("finetune_eval"))
