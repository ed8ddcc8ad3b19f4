"""Fine-tune/eval runs as parallel Ray tasks: each planned run is `diffreid.reid.finetune.run_one`."""
from __future__ import annotations

from pathlib import Path

from diffreid.reid.finetune import FinetuneEvalConfig, RunLog, planned_runs, require_files, run_one, write_results


def run_finetune_eval_ray(cfg: FinetuneEvalConfig, out_dir: str | Path, num_cpus: float = 1, num_gpus: float = 0,
                          max_retries: int = 2):
    import pandas as pd
    import ray
    from tqdm import tqdm

    require_files(cfg)
    runs, log = planned_runs(cfg), RunLog(cfg, out_dir)
    task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries)(run_one)
    pending = {task.remote(cfg, run): run for run in log.pending(runs)}
    with tqdm(total=len(pending), desc="fine-tune runs (ray)") as bar:
        while pending:
            (done,), _ = ray.wait(list(pending), num_returns=1)
            log.add(pending.pop(done), ray.get(done))
            bar.update(1)
    df = pd.DataFrame(log.rows(runs))
    write_results(df, out_dir)
    return df


def run_study_ray(cfg, out_dir: str | Path, progress: bool = True) -> dict:
    """The miniature reproduction with its fine-tune runs as parallel Ray tasks (builds and pre-training in the
    driver, one CPU process each, as on a laptop)."""
    from diffreid.study import run_study

    return run_study(cfg, out_dir, finetune_runner=run_finetune_eval_ray, progress=progress)
