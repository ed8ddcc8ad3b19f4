"""`build_diff_person` on a Ray cluster: the library's build roles placed on actor pools, streamed by Ray Data.

    prepare_build                      one Ray task with a node's CPUs (+ the generator's GPU share): sources, filter models,
                                       captions, shared reference sets, all cached under OUT
    [shared_lora_ti] train_shared      one Ray task: the shared adapter, trained once
    identities ──map_batches(GeneratorActor pool)──> generated images ──map_batches(ScorerActor pool)──>
    scored images ──driver──> write_identity (atomic per identity)
    measure_build_fidelity             one Ray task (the generators' resources): reader model + figures
    finish_build                       the driver: manifest merge, report

OUT must be storage every node sees (NFS/EFS/Filestore/a local folder on one machine): actors read the plan's
files from it and the driver writes the dataset into it. Re-submitting the same job resumes: the plan is
cached, finished adapters are reused and ``pending_jobs`` leaves out every identity already committed.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from diffreid.build import (BuildConfig, BuildPlan, IdentityGenerator, finish_build, measure_build_fidelity,
                            open_writer, pending_jobs, prepare_build, write_identity)
from diffreid.config import StageConfig


class RayBuildConfig(StageConfig):
    """The `ray:` section of a Ray build config: where each role runs and how many of each."""

    generator_actors: int | None = Field(
        None, ge=1, description="None = one per GPU visible when the job starts (1 without GPUs); set it on "
                                "clusters whose GPU workers autoscale from 0 (none are visible at start)")
    generator_actors_max: int | None = Field(
        None, ge=1, description="above generator_actors, Ray Data grows the pool as the autoscaler adds GPU nodes")
    generator_gpus: float | None = Field(
        None, ge=0, description="GPUs per generator; None = 1 when the cluster has GPUs, else 0 (CPU)")
    generator_cpus: float = Field(1, gt=0, description="the pipeline runs on the GPU; one core feeds it")
    generator_batch_identities: int = Field(
        1, ge=1, description="identities per generator call; in shared_lora_ti every sampling batch mixes them")
    adapter_cache: int = Field(8, ge=1, description="adapters resident per generator (LRU); an SD-1.5 rank-8 "
                                                    "LoRA is ~6 MB, so 8 cost little and save reloads")
    scorer_actors: int = Field(1, ge=1, description="scoring is ~100x cheaper than generation: one keeps up")
    scorer_actors_max: int | None = Field(None, ge=1, description="let Ray Data add scorers under backpressure")
    scorer_gpus: float = Field(0, ge=0, description="0 leaves GPUs to generators; 0.25 shares one with them")
    scorer_cpus: float = Field(1, gt=0, description="Re-ID forward + FAISS search for one identity at a time")
    scorer_batch_identities: int = Field(
        1, ge=1, description="identities per scorer call; one identity's images already fill a Re-ID batch, and "
                             "more makes the scorer wait for several generators so rows reach the writer in bursts")
    max_restarts: int = Field(-1, ge=-1, description="actor recreations after a crash or preemption; -1 = "
                                                     "unlimited, Ray Data's own default for actor pools")
    max_task_retries: int = Field(-1, ge=-1, description="re-runs of a batch lost with its actor; -1 = unlimited "
                                                         "(Ray Data's default); exceptions in our code are not retried")
    task_retries: int = Field(2, ge=0, description="retries of the prepare/shared-adapter tasks on node loss")
    solo_task_cpus: float | None = Field(
        None, gt=0, description="CPUs (and torch threads) of the tasks that run alone: prepare, shared adapter, "
                                "fidelity. None = the largest live node that can also give the generator's GPU "
                                "share (nothing else runs then); the generator's CPUs when none is up yet")
    scorer_labels: dict[str, str] = Field(
        default_factory=dict, description="node labels the scorers need, e.g. {diffreid/node-kind: cpu} on the "
                                          "cluster files' nodes, so they leave GPU nodes' CPUs to generators; "
                                          "{} = anywhere (a one-node cluster has no labels)")


class RayBuildJobConfig(BuildConfig):
    """A BuildConfig plus its `ray:` section; a plain BuildConfig file (configs/toy.yaml) loads too."""

    ray: RayBuildConfig = Field(default_factory=RayBuildConfig, description="placement of the build's roles")


NODE_KIND_LABEL = "diffreid/node-kind"  # cpu | gpu, on every node type of cluster/ and the test cluster


@dataclass
class Placement:
    """Resolved resources: what each role asks Ray for."""

    generator_actors: int
    generator_actors_max: int
    generator_gpus: float
    scorer_actors: int
    scorer_actors_max: int
    cluster_gpus: float
    solo_task_cpus: float


def _largest_node_cpus(gpus_needed: float) -> float:
    import ray

    return max((n["Resources"].get("CPU", 0) for n in ray.nodes()
                if n["Alive"] and n["Resources"].get("GPU", 0) >= gpus_needed), default=0)


def resolve_placement(rc: RayBuildConfig) -> Placement:
    import ray

    gpus = float(ray.cluster_resources().get("GPU", 0))
    gen_gpus = rc.generator_gpus if rc.generator_gpus is not None else (1.0 if gpus else 0.0)
    actors = rc.generator_actors or (max(1, int(gpus // gen_gpus)) if gen_gpus and gpus else 1)
    solo_cpus = rc.solo_task_cpus or max(rc.generator_cpus, _largest_node_cpus(gen_gpus))
    return Placement(actors, max(actors, rc.generator_actors_max or actors), gen_gpus,
                     rc.scorer_actors, max(rc.scorer_actors, rc.scorer_actors_max or rc.scorer_actors), gpus,
                     solo_cpus)


def _solo_task(fn, rc: RayBuildConfig, placement: Placement):
    """fn as a Ray task that runs alone: the generator's GPU share and a node's CPUs as torch threads, at most
    one per core of the node it lands on (a node may advertise more CPUs than it has; a reused worker would
    otherwise keep the thread count of its first task)."""
    import ray

    def run(*args, **kwargs):
        import os

        import torch

        before = torch.get_num_threads()
        threads = max(1, int(placement.solo_task_cpus))
        torch.set_num_threads(min(threads, os.cpu_count() or threads))
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    run.__name__ = fn.__name__
    return ray.remote(num_cpus=placement.solo_task_cpus, num_gpus=placement.generator_gpus,
                      max_retries=rc.task_retries)(run)


def _pool(size: int, max_size: int):
    from ray.data import ActorPoolStrategy

    return ActorPoolStrategy(size=size) if size == max_size else ActorPoolStrategy(min_size=size, max_size=max_size)


def _restart_args(rc: RayBuildConfig) -> dict:
    # Ray 2.60 has no named map_batches parameter for these; the defaults (-1) are Ray Data's own, so only a
    # changed value is passed, as a (deprecated) ray_remote_arg.
    return {k: v for k, v in (("max_restarts", rc.max_restarts), ("max_task_retries", rc.max_task_retries))
            if v != -1}


def _train_shared(cfg: BuildConfig, plan: BuildPlan) -> str:
    return str(IdentityGenerator(cfg, plan).train_shared())


def scored_identities(cfg: RayBuildJobConfig, plan: BuildPlan, pids: list[int], placement: Placement):
    """The Ray Data stream: one row per identity, generated and scored (see ``actors`` for the columns)."""
    import ray

    from diffreid.distributed.actors import GeneratorActor, ScorerActor

    rc = cfg.ray
    ds = ray.data.from_items([{"pid": pid} for pid in pids],
                             override_num_blocks=math.ceil(len(pids) / rc.generator_batch_identities))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        ds = ds.map_batches(GeneratorActor, batch_size=rc.generator_batch_identities,
                            compute=_pool(placement.generator_actors, placement.generator_actors_max),
                            num_cpus=rc.generator_cpus, num_gpus=placement.generator_gpus or None,
                            fn_constructor_args=(cfg, plan), fn_constructor_kwargs={"capacity": rc.adapter_cache},
                            **_restart_args(rc))
        ds = ds.map_batches(ScorerActor, batch_size=rc.scorer_batch_identities,
                            compute=_pool(placement.scorer_actors, placement.scorer_actors_max),
                            num_cpus=rc.scorer_cpus, num_gpus=rc.scorer_gpus or None,
                            fn_constructor_args=(cfg, plan), **_restart_args(rc),
                            **({"label_selector": dict(rc.scorer_labels)} if rc.scorer_labels else {}))
    return ds


def build_diff_person_ray(cfg: RayBuildJobConfig, out_dir: str | Path, progress: bool = True) -> Path:
    """The whole build on the connected Ray cluster, resumable per identity. Returns the report path."""
    import ray
    from tqdm import tqdm

    from diffreid.distributed.actors import row_to_batch, scores_of_row

    t0 = time.time()
    rc = cfg.ray
    placement = resolve_placement(rc)
    out = Path(out_dir).resolve()
    plan = ray.get(_solo_task(prepare_build, rc, placement).remote(cfg, out, progress=False))
    timings = {"prepare_s": time.time() - t0, "placement": placement.__dict__}
    with open_writer(cfg, plan) as writer:
        todo = {j.pid: j for j in pending_jobs(plan, writer)}
    if todo:
        if cfg.adapter.mode == "shared_lora_ti":
            t1 = time.time()
            ray.get(_solo_task(_train_shared, rc, placement).remote(cfg, plan))
            timings["shared_adapter_s"] = time.time() - t1
        t1 = time.time()
        data_ctx = ray.data.DataContext.get_current()
        own_bars, data_ctx.enable_progress_bars = data_ctx.enable_progress_bars, False  # the per-identity bar
        # below replaces them (in a log file Ray Data's print an empty block every 10 s)
        try:
            with open_writer(cfg, plan) as writer:
                rows = scored_identities(cfg, plan, sorted(todo), placement).iter_rows()
                for row in tqdm(rows, total=len(todo), desc="identities (ray)", disable=not progress):
                    scores, kept = scores_of_row(row)
                    write_identity(writer, todo[int(row["pid"])], row_to_batch(row), scores, kept)
        finally:
            data_ctx.enable_progress_bars = own_bars
        timings["stream_s"] = time.time() - t1
    if cfg.fidelity.enabled:
        t1 = time.time()
        ray.get(_solo_task(measure_build_fidelity, rc, placement).remote(cfg, plan))
        timings["fidelity_s"] = time.time() - t1
    timings["total_s"] = time.time() - t0
    timings["identities_generated"] = len(todo)
    return finish_build(cfg, plan, timings)
