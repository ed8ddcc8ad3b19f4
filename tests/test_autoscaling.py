"""Scale-out on one machine with Ray's fake multi-node autoscaler (tests/fake_cluster.py): GPU nodes start from
zero when a task or the build asks for ``num_gpus=1``, each generator actor gets its own GPU node and exactly one
device in ``CUDA_VISIBLE_DEVICES``, the scoring pool runs on CPU nodes, idle GPU nodes go away again, and Ray Train
with ``use_gpu=True`` places a worker per GPU node and survives losing one.

The fake GPU nodes declare ``GPU: 1`` without having one: torch sees no CUDA there, so ``runtime.device: auto``
falls back to the CPU. Order matters within the module (one cluster): the build runs after the GPU-task test
and the scale-down test watches the nodes the build left behind."""
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

import fake_cluster as fc
from test_ray_build import IDS, IMAGES, TINY, check_complete, submit

pytestmark = [pytest.mark.ray, pytest.mark.slow]
BUILD = {}  # what the build test leaves for the scale-down test: when the job ended


@pytest.fixture(scope="module")
def autoscaling_cluster(tmp_path_factory):
    import ray

    if ray.is_initialized():  # a driver of conftest's session cluster from an earlier module
        ray.shutdown()
    cluster = fc.start_fake_cluster(tmp_path_factory.mktemp("fake-cluster"))
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        left = cluster.stop()
        assert not left, f"processes of the fake cluster outlived its teardown: {left}"


def test_autoscaling_gpu_task_scales_gpu_worker_from_zero(autoscaling_cluster):
    """A task and an actor with num_gpus=1 make the autoscaler start gpu_worker nodes (none at start); Ray
    gives each exactly one device in CUDA_VISIBLE_DEVICES.

    Why ``cuda`` is right inside such a worker: Ray sets CUDA_VISIBLE_DEVICES to the GPU ids it assigned
    (here "0", the node's only one) before the worker imports torch, and CUDA numbers the visible devices
    from 0, so ``torch.device("cuda")`` (what ``RuntimeConfig.torch_device`` returns, the current device, 0)
    *is* the assigned GPU; the code never names an index. On these fake nodes torch has no CUDA at all, so
    ``device: auto`` resolves to the CPU."""
    import ray

    assert fc.count_alive("gpu_worker") == 0 and ray.cluster_resources().get("GPU", 0) == 0

    def where():
        import torch

        from diffreid.config import RuntimeConfig

        ctx = ray.get_runtime_context()
        return {"node": ctx.get_node_id(), "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "accelerators": ctx.get_accelerator_ids(),
                "auto": str(RuntimeConfig(device="auto").torch_device()), "cuda": torch.cuda.is_available()}

    @ray.remote(num_gpus=1, num_cpus=1)
    class Probe:
        def where(self):
            return where()

    t0 = time.time()
    task = ray.get(ray.remote(num_gpus=1, num_cpus=1)(where).remote(), timeout=240)
    first_gpu_node_s = time.time() - t0
    actor = Probe.remote()
    got = ray.get(actor.where.remote(), timeout=240)
    ray.kill(actor)

    gpu_nodes = {n["NodeID"] for n in fc.alive_nodes() if fc.node_kind(n["Resources"]) == "gpu_worker"}
    for seen in (task, got):
        assert seen["node"] in gpu_nodes, (seen, gpu_nodes)
        assert seen["visible"] == "0" and seen["gpu_ids"] == ["0"], seen  # exactly one device, Ray's choice
        assert seen["accelerators"]["GPU"] == ["0"], seen
        assert seen["auto"] == ("cuda" if seen["cuda"] else "cpu"), seen
    assert 1 <= len(gpu_nodes) <= fc.NODE_TYPES["gpu_worker"]["max_workers"]
    print(f"submit -> first GPU node and task done: {first_gpu_node_s:.1f} s")


def submit_build(dashboard: str, config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return submit(dashboard, config, out, *extra, timeout=540)  # < pytest's 600 s


def test_autoscaling_build_places_generators_on_gpu_nodes(autoscaling_cluster, tmp_path):
    """The build job with one GPU per generator: two generator actors on two gpu_worker nodes (one each), the
    scorer on a CPU node, and a dataset that verifies. CPU fallback: the fake GPU nodes have no CUDA."""
    from ray.util.state import list_actors

    # from zero GPU nodes (the GPU-task test's node goes after the idle timeout)
    fc.wait_until(lambda: fc.count_alive("gpu_worker") == 0, fc.IDLE_TIMEOUT_MINUTES * 60 + 90, "no gpu_worker")
    before = set(fc.node_kinds(autoscaling_cluster.dashboard))
    config = tmp_path / "tiny-gpu.yaml"
    # the pool size is given: with GPU workers at 0 no GPU is visible when the job starts
    config.write_text(TINY.replace("ray: {generator_actors: 2,", "ray: {generator_actors: 2, generator_gpus: 1, "
                                   f"scorer_labels: {{{fc.NODE_KIND_LABEL}: cpu}},")
                      + "runtime: {device: auto}\n")
    out = tmp_path / "dp"
    t0 = time.time()
    done = submit_build(autoscaling_cluster.dashboard, config, out)
    took = time.time() - t0
    BUILD["done_at"] = time.time()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    check_complete(out)
    timings = json.loads((out / "timings.json").read_text())
    assert timings["placement"]["generator_actors"] == 2 and timings["placement"]["generator_gpus"] == 1
    assert timings["placement"]["solo_task_cpus"] == 1  # no GPU node up at submit: the generator's CPUs

    kinds = fc.node_kinds(autoscaling_cluster.dashboard)
    actors = list_actors(address=autoscaling_cluster.dashboard, detail=True, limit=1000)
    generators = [a for a in actors if "GeneratorActor" in (a.class_name or "")]
    scorers = [a for a in actors if "ScorerActor" in (a.class_name or "")]
    assert len(generators) == 2 and len(scorers) == 1, [(a.class_name, a.state) for a in actors]
    gen_nodes = [a.node_id for a in generators]
    assert len(set(gen_nodes)) == 2, f"two generators on one node: {gen_nodes}"
    assert all(kinds[n] == "gpu_worker" and n not in before for n in gen_nodes), (gen_nodes, kinds, before)
    # scorer_labels: on a CPU node, never a GPU node's spare CPU (without it, 1 run in 3 put it there)
    assert kinds[scorers[0].node_id] == "cpu_worker", (scorers[0].node_id, kinds)
    assert not (scorers[0].required_resources or {}).get("GPU"), scorers[0].required_resources
    print(f"build of {IDS} identities x {IMAGES} images on the fake cluster: {took:.0f} s; "
          f"timings {json.dumps({k: v for k, v in timings.items() if k.endswith('_s')})}")


def test_autoscaling_idle_gpu_nodes_scale_down(autoscaling_cluster):
    """With nothing left to run, every gpu_worker goes within the idle timeout (plus the autoscaler's update
    interval and node shutdown); the head stays. Timed from the end of the build job (run alone, from the end
    of a GPU task of its own)."""
    import ray

    idle_s = fc.IDLE_TIMEOUT_MINUTES * 60
    t0 = BUILD.get("done_at")
    if t0 is None:
        ray.get(ray.remote(num_gpus=1, num_cpus=1)(lambda: None).remote(), timeout=240)
        t0 = time.time()
    fc.wait_until(lambda: fc.count_alive("gpu_worker") == 0, t0 + idle_s + 90 - time.time(),
                  "idle gpu_worker nodes to go")
    gone_s = time.time() - t0
    assert fc.count_alive("head") == 1
    assert ray.cluster_resources().get("GPU", 0) == 0
    print(f"idle GPU nodes gone {gone_s:.1f} s after the job (idle timeout {idle_s:.0f} s)")


@pytest.mark.timeout(600)
def test_autoscaling_ray_train_places_gpu_workers_and_survives_node_loss(autoscaling_cluster, tmp_path, monkeypatch):
    """Pre-training on Ray Train with ``ScalingConfig(num_workers=2, use_gpu=True)``: the autoscaler starts a
    gpu_worker for each worker (one GPU each), and a worker's node lost mid-run (every process of it SIGKILLed,
    as a spot preemption) makes FailureConfig restart the group on GPU nodes, resuming from the last registered
    checkpoint: every epoch runs once. gloo, and ``runtime.device: auto`` -> CPU: the GPUs are declared only."""
    import threading

    from ray.util.state import list_actors

    from diffreid.data import load_dataset
    from diffreid.data.toyworld import ToyWorldConfig, render_world
    from diffreid.distributed.train import pretrain_with_ray
    from diffreid.reid.pretrain import PretrainConfig
    from test_pretrain import TINY as TINY_PRETRAIN

    # Ray Train gives up on a worker group that is not up in 60 s; here the autoscaler first starts its nodes
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "240")
    records = load_dataset("market_layout", render_world(
        ToyWorldConfig(ids_train=8, ids_test=2, cams=2, height=64, width=32, seed=3), tmp_path / "world")).train
    storage = tmp_path / "storage"
    cfg = PretrainConfig.load(overrides=TINY_PRETRAIN + [
        "epochs=12", "runtime.device=auto", "ray.num_workers=2", "ray.use_gpu=true", "ray.backend=gloo",
        "ray.max_failures=2", f"ray.storage_path={storage}"])
    dashboard = autoscaling_cluster.dashboard

    def train_workers(state: str | None = None) -> list:
        filters = [("class_name", "=", "RayTrainWorker")] + ([("state", "=", state)] if state else [])
        return list_actors(address=dashboard, filters=filters, detail=True, limit=1000)

    box = {}
    t0 = time.time()
    runner = threading.Thread(target=lambda: box.update(result=pretrain_with_ray(cfg, records, tmp_path / "out")))
    runner.start()
    first_group, victim, killed_at, first_seen = [], None, None, None
    deadline = time.time() + 420
    while time.time() < deadline and runner.is_alive():
        if first_seen is None and list(storage.rglob("checkpoint_*/state.pt")):
            first_seen = time.time()
        # past two of the controller's 2-s polls, so the restarted group resumes from a registered checkpoint
        if first_seen is not None and time.time() - first_seen > 5:
            first_group = train_workers("ALIVE")
            if len(first_group) == 2:
                victim = first_group[-1].node_id
                killed_at = time.time()
                assert autoscaling_cluster.kill_node(victim), f"no process of node {victim}"
                break
        time.sleep(0.2)
    runner.join(timeout=max(1.0, deadline + 120 - time.time()))
    done_at = time.time()
    assert victim is not None, "no checkpoint appeared before training ended; cannot test the node loss"
    assert not runner.is_alive() and "result" in box, "pre-training did not finish after the node loss"

    kinds = fc.node_kinds(dashboard)
    first_nodes = [w.node_id for w in first_group]
    assert len(set(first_nodes)) == 2 and all(kinds[n] == "gpu_worker" for n in first_nodes), (first_nodes, kinds)
    # a placement-group bundle's GPU shows as GPU_group_<pg id> (and GPU_group_<index>_<pg id>): one each
    gpus = [sum(v for k, v in (w.required_resources or {}).items() if k.startswith("GPU_group_") and
                k.count("_") == 2) for w in first_group]
    assert gpus == [1, 1], [w.required_resources for w in first_group]
    restarted = [w for w in train_workers() if w.actor_id not in {f.actor_id for f in first_group}]
    assert len(restarted) >= 2, f"no restarted worker group: {[(w.actor_id, w.state) for w in train_workers()]}"
    assert all(kinds[w.node_id] == "gpu_worker" and w.node_id != victim for w in restarted), (restarted, kinds)

    history = json.loads((tmp_path / "out" / "recipe.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, 13))  # every epoch once, none redone from zero
    resumed = [h for h in history if h["resumed_from_epoch"] >= 1]
    assert resumed, "the last epochs did not run in a restarted group"
    trained_s = sum(h["seconds"] for h in history)
    lost_s = (done_at - killed_at) - sum(h["seconds"] for h in resumed)  # detection, a new node, a new group
    print(f"Ray Train on fake GPU nodes: 2 workers on nodes {[n[-5:] for n in first_nodes]}; node {victim[-5:]} "
          f"lost {killed_at - t0:.0f} s after fit() began, at epoch {resumed[0]['resumed_from_epoch']}; "
          f"restarted on {sorted({w.node_id[-5:] for w in restarted})}; fit {done_at - t0:.0f} s in all, "
          f"{trained_s:.0f} s of it in epochs; loss to end {done_at - killed_at:.0f} s, of it lost {lost_s:.0f} s")


@pytest.mark.timeout(900)
def test_node_loss_mid_build_finishes_without_missing_or_doubled_identities(autoscaling_cluster, tmp_path):
    """A GPU node lost mid-build, as a spot preemption: every process of the node that runs a generator is
    SIGKILLed (what the provider's terminate does, without its grace). The GCS marks the node dead, Ray Data
    restarts the actor on a new GPU node from the autoscaler and retries its batch, and the autoscaler's
    liveness check terminates the dead node through the provider. The job still finishes, the dataset
    verifies with every identity once, and adapters finished before the loss are not trained again."""
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_actors

    from diffreid.generation.adapters.train import ADAPTER_JSON
    from test_ray_build import committed, job_id

    config = tmp_path / "tiny-gpu.yaml"
    config.write_text(TINY.replace("ray: {generator_actors: 2,", "ray: {generator_actors: 2, generator_gpus: 1,")
                      + "runtime: {device: auto}\n")
    out = tmp_path / "dp"
    slow = ["--set", "adapter.steps=12", "--set", "adapter.checkpoint_every=4"]  # the kill lands mid-run
    t0 = time.time()
    started = submit(autoscaling_cluster.dashboard, config, out, *slow, wait=False, timeout=300)
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    job = job_id(started.stdout + started.stderr)
    jobs = JobSubmissionClient(autoscaling_cluster.dashboard)

    def finished_adapters() -> dict:
        return {p.parent.name: p.stat().st_mtime_ns for p in (out / "adapters").glob(f"*/{ADAPTER_JSON}")}

    def first_identity() -> bool:
        status = str(jobs.get_job_status(job))
        if status.rsplit(".", 1)[-1] in ("FAILED", "STOPPED"):
            raise AssertionError(f"the build job {status} before any identity:\n{jobs.get_job_logs(job)[-4000:]}")
        return committed(out) >= 1

    # ~75 s alone; once (1 of 6 runs, under load) none came within 300 s
    fc.wait_until(first_identity, 420, "a first committed identity")
    kinds = fc.node_kinds(autoscaling_cluster.dashboard)
    alive = list_actors(address=autoscaling_cluster.dashboard, filters=[("state", "=", "ALIVE")], detail=True)
    lost = next(a for a in alive if "GeneratorActor" in (a.class_name or "") and kinds.get(a.node_id) == "gpu_worker")
    victim = lost.node_id
    before = {"committed": committed(out), "adapters": finished_adapters()}
    killed_at = time.time()
    killed = autoscaling_cluster.kill_node(victim)
    assert killed, f"no process of node {victim}"
    assert before["committed"] < IDS, "the build finished before the node was lost: nothing was tested"

    status = fc.wait_until(lambda: (s := jobs.get_job_status(job)).is_terminal() and s, 500, "the job to end")
    done_at = time.time()
    assert str(status) in ("SUCCEEDED", "JobStatus.SUCCEEDED"), jobs.get_job_logs(job)[-4000:]
    check_complete(out)  # verify passes, each identity once with all its images, no duplicate file or hash
    after = finished_adapters()
    retrained = [pid for pid, mtime in before["adapters"].items() if after.get(pid) != mtime]
    assert not retrained, f"adapters finished before the node loss were trained again: {retrained}"
    assert victim not in {n["NodeID"] for n in fc.alive_nodes()}
    # the lost generator actor was restarted (same actor id) on another gpu_worker, new or freed by the pool
    kinds = fc.node_kinds(autoscaling_cluster.dashboard)
    restarted = list_actors(address=autoscaling_cluster.dashboard, filters=[("actor_id", "=", lost.actor_id)],
                            detail=True)[0]
    assert restarted.num_restarts >= 1 and restarted.node_id != victim, restarted
    assert kinds[restarted.node_id] == "gpu_worker", (restarted.node_id, kinds)
    print(f"node loss: killed node {victim[-5:]} ({killed} processes) {killed_at - t0:.0f} s after submit, "
          f"with {before['committed']}/{IDS} identities committed and {len(before['adapters'])} adapters finished "
          f"(none retrained); the job ended {done_at - killed_at:.0f} s after the loss, {done_at - t0:.0f} s in "
          f"all; the lost generator restarted {restarted.num_restarts}x, on node {restarted.node_id[-5:]}")

