"""DiVE's VI expansion as one Ray task asking for the config's `ray:` resources; a retried task continues from
the committed identities."""
from __future__ import annotations

from pathlib import Path


def _expand_task(config: dict, out: str) -> dict:
    from diffreid.vi import VIExpandConfig, expand_vi

    return expand_vi(VIExpandConfig.model_validate(config), out).summary


def expand_vi_ray(cfg, out_dir: str | Path) -> dict:
    """``expand_vi`` on the connected Ray cluster; returns the summary."""
    import ray

    task = ray.remote(num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus, max_retries=2)(_expand_task)
    return ray.get(task.remote(cfg.model_dump(mode="json"), str(Path(out_dir).resolve())))
