"""The Ray build on a real local cluster (127.0.0.1): `ray job submit` of ray_jobs.build_diff_person, a killed
generator actor and a killed driver followed by a re-submission, and the generator actor's adapter LRU."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
# anchored with "/": a bare "data" would also drop diffreid/data from the upload
EXCLUDES = {"excludes": ["/.git", "/.venv", "/outputs", "/runs", "/data", "__pycache__"]}
IDS, IMAGES = 4, 4

pytestmark = pytest.mark.ray


def toy_build_yaml(ids: int) -> str:
    """The toy build (configs/toy.yaml) over ``ids`` toy identities: the Ray build tests' and
    benchmarks/bench_fake_cluster.py's base."""
    return f"""
_BASE_: {REPO / "configs" / "toy.yaml"}
sources:
  - name: toy
    toyworld: {{ids_train: {ids}, ids_test: 2, cams: 2, images_per_cam: [3, 4], cam_presence: 1.0,
               height: 64, width: 32, seed: 0}}
    max_identities: {ids}
    min_images: 4
"""


TINY = toy_build_yaml(IDS) + f"""refset: {{num_images: 2, steps: 2, height: 64, width: 32, batch_size: 2}}
adapter: {{steps: 2, checkpoint_every: 2}}
sampler: {{num_images: {IMAGES}, steps: 2, batch_size: 4}}
filter_reid: {{epochs: 1, warmup_epochs: 0, milestones: [], P: 4, K: 2, iters_per_epoch: 2}}
fidelity: {{reader: {{epochs: 1, iters_per_epoch: 2}}}}
ray: {{generator_actors: 2, scorer_actors: 1, adapter_cache: 2}}
"""


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny-ray.yaml"
    path.write_text(TINY)
    return path


def submit(dashboard: str, config: Path, out: Path, *extra: str, wait: bool = True,
           timeout: float = 400) -> subprocess.CompletedProcess:
    """`ray job submit` of the build job; the one command every Ray build test and benchmark runs."""
    cmd = [RAY, "job", "submit", "--address", dashboard, "--working-dir", str(REPO),
           "--runtime-env-json", json.dumps(EXCLUDES)]
    if not wait:
        cmd.append("--no-wait")
    cmd += ["--", "python", "-m", "ray_jobs.build_diff_person", "--config", str(config), "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def job_id(output: str) -> str:
    for line in output.splitlines():
        if "Job '" in line and "submitted successfully" in line:
            return line.split("'")[1]
    raise AssertionError(f"no job id in:\n{output}")


def committed(out: Path) -> int:
    return len(list((out / "manifest").glob("part-*.parquet"))) if (out / "manifest").is_dir() else 0


def wait_for(predicate, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def check_complete(out: Path) -> None:
    import pandas as pd

    from diffreid.diffperson import verify

    report = verify(out)
    assert report.ok, str(report)
    df = pd.read_parquet(out / "manifest.parquet")
    generated = df[df["origin"] == "generated"]
    assert len(generated) == IDS * IMAGES
    assert sorted(generated["source_pid"].unique().tolist()) == list(range(1, IDS + 1))
    per_id = generated.groupby("pid")["index"].apply(sorted)
    assert all(v == list(range(IMAGES)) for v in per_id), per_id
    assert not generated["sha256"].duplicated().any()
    assert not generated["file"].duplicated().any()
    assert not list((out / "manifest").glob("pending-*"))


@pytest.mark.slow
def test_ray_job_submit_builds_a_verified_diff_person(ray_cluster, tiny_config, tmp_path):
    out = tmp_path / "dp"
    done = submit(ray_cluster["dashboard"], tiny_config, out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"diff-person: {out}" in done.stdout
    check_complete(out)
    timings = json.loads((out / "timings.json").read_text())
    assert timings["identities_generated"] == IDS
    assert timings["placement"]["generator_actors"] == 2
    assert timings["placement"]["solo_task_cpus"] == 4  # prepare/fidelity run alone: the node's --num-cpus
    assert sorted(p.name for p in (out / "adapters").iterdir()) == [str(i) for i in range(1, IDS + 1)]
    fidelity = json.loads((out / "fidelity.json").read_text())  # measured by a Ray task, shown in the report
    assert fidelity["groups"]["all"]["images"] == IDS * IMAGES and "fidelity_s" in timings
    assert "Identity fidelity" in (out / "report.html").read_text()


@pytest.mark.slow
def test_killed_actor_and_killed_driver_then_resubmit_completes(ray_cluster, tiny_config, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_actors

    out = tmp_path / "dp"
    # one generator and longer adapter training, so identities finish one after another and the kills land mid-run
    slow = ("--set", "ray.generator_actors=1", "--set", "adapter.steps=12", "--set", "adapter.checkpoint_every=4")
    started = submit(ray_cluster["dashboard"], tiny_config, out, *slow, wait=False)
    assert started.returncode == 0, started.stderr
    job = job_id(started.stdout + started.stderr)

    def generator_pid():
        actors = list_actors(address=ray_cluster["dashboard"], filters=[("state", "=", "ALIVE")], detail=True)
        pids = [a.pid for a in actors if "GeneratorActor" in (a.class_name or "")]
        return pids[0] if pids else None

    # 1. the generator actor dies mid-run: Ray Data brings up a new one and retries its batch in the same job
    victim = wait_for(generator_pid, 240, "the generator actor")
    assert committed(out) == 0
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: generator_pid() not in (None, victim), 120, "a restarted generator actor")
    wait_for(lambda: committed(out) >= 1, 240, "a first identity after the actor was killed")
    # 2. the driver dies (job stopped) before the build is complete
    jobs = JobSubmissionClient(ray_cluster["dashboard"])
    jobs.stop_job(job)
    wait_for(lambda: jobs.get_job_status(job).is_terminal(), 120, "the job to stop")
    assert jobs.get_job_status(job) == JobStatus.STOPPED
    partial = committed(out)
    assert 1 <= partial < IDS, f"{partial} identities committed: the driver should have died mid-run"
    # 3. re-submission completes only what is missing
    done = submit(ray_cluster["dashboard"], tiny_config, out, *slow)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((out / "timings.json").read_text())["identities_generated"] == IDS - partial
    check_complete(out)


@pytest.fixture(scope="module")
def tiny_plan(tiny_config, tmp_path_factory):
    from diffreid.build import prepare_build
    from diffreid.distributed.build import RayBuildJobConfig

    cfg = RayBuildJobConfig.load(tiny_config)
    return cfg, prepare_build(cfg, tmp_path_factory.mktemp("plan"), progress=False)


def test_generator_actor_adapter_lru(ray_client, tiny_plan):
    import ray

    from diffreid.distributed.actors import GeneratorActor

    cfg, plan = tiny_plan
    k = 2
    actor = ray.remote(GeneratorActor).options(num_cpus=1).remote(cfg, plan, capacity=k)
    p1, p2, p3 = (j.pid for j in plan.jobs[:3])
    first = ray.get(actor.generate.remote(p1))
    ray.get(actor.generate.remote(p2))
    two = ray.get(actor.stats.remote())
    assert two["resident"] == [f"id{p1}", f"id{p2}"] and two["loads"] == 2
    per_adapter = two["lora_numel"] // 2
    assert per_adapter > 0 and two["lora_tensors"][f"id{p1}"] > 0

    # K+1: the least recently used (p1) is evicted and its weights freed
    ray.get(actor.generate.remote(p3))
    s = ray.get(actor.stats.remote())
    assert s["resident"] == [f"id{p2}", f"id{p3}"]
    assert sorted(s["loaded"]) == sorted(s["resident"])
    assert s["lora_numel"] == k * per_adapter
    assert s["evicted_alive"] == 0
    # a resident adapter is reused (no load) and becomes most recent
    ray.get(actor.generate.remote(p2))
    s = ray.get(actor.stats.remote())
    assert s["loads"] == 3 and s["resident"] == [f"id{p3}", f"id{p2}"]
    # the evicted one is reloaded on demand (evicting p3 now) and samples exactly as before
    again = ray.get(actor.generate.remote(p1))
    s = ray.get(actor.stats.remote())
    assert s["loads"] == 4 and s["resident"] == [f"id{p2}", f"id{p1}"]
    assert s["lora_numel"] == k * per_adapter and s["evicted_alive"] == 0
    for a, b in zip(first.images, again.images):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ray.kill(actor)


def test_ray_build_config_rejects_bad_sections(tiny_config):
    from diffreid.config import ConfigError
    from diffreid.distributed.build import RayBuildJobConfig

    cfg = RayBuildJobConfig.load(tiny_config, overrides=["ray.scorer_actors=3"])
    assert cfg.ray.scorer_actors == 3 and cfg.ray.adapter_cache == 2
    with pytest.raises(ConfigError, match="ray.adapter_cache"):
        RayBuildJobConfig.load(tiny_config, overrides=["ray.adapter_cache=0"])
    with pytest.raises(ConfigError, match="ray.generator_gpu"):
        RayBuildJobConfig.load(tiny_config, overrides=["ray.generator_gpu=1"])
    # a plain BuildConfig file (no ray: section) loads with the defaults
    plain = RayBuildJobConfig.load(REPO / "configs" / "toy.yaml")
    assert plain.ray.generator_actors is None and plain.ray.max_restarts == -1


def test_shared_mode_sampling_batches_mix_identities(tiny_config, tmp_path):
    from diffreid.build import prepare_build
    from diffreid.distributed.actors import GeneratorActor
    from diffreid.distributed.build import RayBuildJobConfig

    cfg = RayBuildJobConfig.load(tiny_config, overrides=["adapter.mode=shared_lora_ti", "adapter.steps=2",
                                                         "sampler.num_images=2"])
    plan = prepare_build(cfg, tmp_path, progress=False)
    actor = GeneratorActor(cfg, plan, capacity=1)
    p1, p2 = plan.jobs[0].pid, plan.jobs[1].pid
    batches = actor.generate_many([p1, p2])
    assert [len(b.images) for b in batches] == [2, 2]
    for pid, batch in zip((p1, p2), batches):
        assert {r["pid"] for r in batch.records} == {pid}
        assert cfg.adapter.token(pid) in batch.prompt
        for r in batch.records:  # every sampling batch holds both identities' prompts
            prompts = " ".join(r["batch"]["prompts"])
            assert cfg.adapter.token(p1) in prompts and cfg.adapter.token(p2) in prompts
    assert actor.stats()["resident"] == ["shared"]
