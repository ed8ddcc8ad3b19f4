import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray binds every port to loopback only in its single-machine mode (checked with `ss -ltnp`).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# A local ray.init() leaves ~/.ray/auth_token behind, which turns token auth on for later `ray start`s
# while the test driver sends none; the test cluster is loopback-only, so auth stays off.
os.environ["RAY_AUTH_MODE"] = "disabled"
# `python` inside a submitted Ray job must be this venv's interpreter
os.environ["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"


import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffreid.distributed.cluster import free_loopback_port as free_port


# `ray start --block` on SIGTERM first asks the GCS to drain its node for up to 30 s; signalled as a group, the
# GCS is already gone, so the teardown would wait out the whole 30 s. Test clusters serve nothing to drain.
NO_DRAIN_ON_STOP = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}


def wait_for_port(port: int, deadline: float) -> None:
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A real local Ray cluster (`ray start --head --block`) bound to 127.0.0.1, shared by the session's Ray
    tests, and stopped by signalling its own process group only (other clusters on the machine live on)."""
    import signal

    ray_bin = str(Path(sys.executable).with_name("ray"))
    port, dash, metrics = free_port(), free_port(), free_port()
    log = open(tmp_path_factory.mktemp("ray") / "ray-start.log", "w")
    proc = subprocess.Popen([ray_bin, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=4",
                             # agent/metrics ports of their own: another Ray on the machine holds the defaults
                             f"--metrics-export-port={metrics}",
                             *(f"--{flag}={free_port()}" for flag in (
                                 "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                 "runtime-env-agent-port", "ray-client-server-port")),
                             "--disable-usage-stats"], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **NO_DRAIN_ON_STOP}, start_new_session=True)
    try:
        deadline = time.time() + 180
        wait_for_port(port, deadline)
        wait_for_port(dash, deadline)
        wait_for_job_agent(f"http://127.0.0.1:{dash}", deadline)
        yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}",
               "metrics": f"http://127.0.0.1:{metrics}/metrics"}
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def wait_for_job_agent(dashboard: str, deadline: float) -> None:
    """The dashboard port opens before the head's job agent registers (slowly on a loaded machine); until
    then submissions fail with 'No available agent'. Submit a no-op job until one is accepted and done."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(dashboard)
    while True:
        try:
            job = client.submit_job(entrypoint="true")
            break
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.time() > deadline:
                raise
            time.sleep(1)
    while client.get_job_status(job) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        if time.time() > deadline:
            raise TimeoutError(f"the readiness job {job} did not finish")
        time.sleep(0.5)


@pytest.fixture()
def ray_client(ray_cluster):
    import ray

    if not ray.is_initialized():
        ray.init(address=ray_cluster["address"], log_to_driver=False)
    yield ray_cluster


def _folder_snapshot(folder: Path) -> dict:
    return {str(f.relative_to(folder)): (f.stat().st_size, f.stat().st_mtime_ns)
            for f in sorted(folder.rglob("*")) if f.is_file()}


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """The tiny SD-1.x pipeline folder (``diffreid models tiny`` defaults: seed 0, 64x32), built once per session
    and shared by every test module that needs it (building it costs seconds; loading it well under one).

    Shared read-only: a test that changes a pipeline (adapters, tokens, schedulers) changes its own loaded copy
    (``load_pipeline`` in a module- or function-scoped fixture), never this folder. The teardown checks that
    no file in it was added, removed or rewritten, so a test that writes here fails instead of silently
    leaking into the modules after it."""
    from diffreid.models.tiny import build_tiny_pipeline

    folder = build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd") / "pipe", seed=0, sample_height=64,
                                 sample_width=32)
    before = _folder_snapshot(folder)
    yield folder
    assert _folder_snapshot(folder) == before, f"a test wrote into the shared tiny pipeline folder {folder}"
