"""Ray's own fake multi-node autoscaling cluster on one machine, for the autoscaling tests.

``ray start --head --autoscaling-config=FILE`` with ``RAY_FAKE_CLUSTER=1`` runs the real autoscaler (v1) with
``provider: type: fake_multinode`` (``ray/autoscaler/_private/fake_multi_node/node_provider.py``): each node it
"launches" is a real raylet started in the autoscaler's monitor process with the node type's declared resources
(``GPU: 1`` without a GPU), joining the head's GCS. ``ray.cluster_utils.AutoscalingCluster`` does the same but
reads an ``example.yaml`` the wheel does not ship and runs ``ray stop --force`` (which ends every Ray cluster on
the machine), so the config is written here and the cluster is started and stopped like ``conftest.ray_cluster``:
own free ports on 127.0.0.1, stopped by signalling its own processes only.

Stopping: the head (``ray start --block``) runs in a new session, so its process group holds GCS, dashboard,
monitor and head raylet. The provider starts worker raylets from the monitor *without* fate-sharing
(``Node(..., spawn_reaper=False)``), so once the monitor is gone they would be re-parented and live on until their
GCS reconnect timeout. The teardown therefore also signals, by pid, every process whose command line names this
cluster's GCS address (raylets, agents and workers of every fake node; the port is unique to this cluster, so no
other cluster's process matches). The provider's own ``terminate_node`` (used on scale-down) only calls
``Node.kill_all_processes`` on that node: it never runs ``ray stop``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from diffreid.distributed.build import NODE_KIND_LABEL

MB = 1024 ** 2
IDLE_TIMEOUT_MINUTES = 0.2  # 12 s: scale-down is observable within a test
WORKER_OBJECT_STORE = 100 * MB  # Ray's minimum is 75 MB; a fake node needs a few hundred MB in all
HEAD_OBJECT_STORE = 200 * MB

# The node types the autoscaling tests expect; the cloud cluster files use the same names.
NODE_TYPES = {  # labels: the cluster files' (test_cluster_configs checks they agree)
    "gpu_worker": {"resources": {"CPU": 1, "GPU": 1}, "labels": {NODE_KIND_LABEL: "gpu"},
                   "min_workers": 0, "max_workers": 3},
    "cpu_worker": {"resources": {"CPU": 1}, "labels": {NODE_KIND_LABEL: "cpu"}, "min_workers": 0, "max_workers": 2},
}
HEAD_TYPE = "ray.head.default"


def autoscaling_config(gcs_address: str, head_cpus: int = 0) -> dict:
    """The cluster config the fake provider reads (the fields of the example.yaml the wheel names)."""
    types = {name: {"resources": {**t["resources"], "object_store_memory": WORKER_OBJECT_STORE},
                    "labels": t["labels"], "node_config": {}, "min_workers": t["min_workers"],
                    "max_workers": t["max_workers"]}
             for name, t in NODE_TYPES.items()}
    types[HEAD_TYPE] = {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0}
    return {
        "cluster_name": "diffreid-fake",
        "max_workers": sum(t["max_workers"] for t in NODE_TYPES.values()),
        # gcs_address: the provider's default is <node ip>:6379, another cluster's port on a shared machine;
        # launch_multiple: without it a launch of N nodes starts one
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address, "launch_multiple": True,
                     "use_node_id_as_ip": True, "disable_node_updaters": True, "disable_launch_config_check": True},
        "available_node_types": types,
        "head_node_type": HEAD_TYPE,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
        "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


@dataclass
class FakeCluster:
    address: str  # GCS, for ray.init
    dashboard: str  # for `ray job submit` / the state API
    folder: Path
    proc: subprocess.Popen
    log_file: object = field(repr=False, default=None)

    def own_processes(self) -> list:
        """Every live process of this cluster: the head's process group, its descendants (the provider's
        fake nodes and their workers) and any process whose command line names this cluster's GCS address."""
        import psutil

        found = {}
        try:
            head = psutil.Process(self.proc.pid)
            found[head.pid] = head
            for p in head.children(recursive=True):
                found[p.pid] = p
        except psutil.NoSuchProcess:
            pass
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if any(self.address in arg for arg in (p.info["cmdline"] or [])):
                    found[p.pid] = p
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        found.pop(os.getpid(), None)
        return list(found.values())

    def node_processes(self, node_id: str) -> list:
        """The processes of one fake node (raylet, agents, its workers): those named with its node id, and
        their descendants. The provider gives worker nodes deterministic ids (fff…00001, …00002)."""
        import psutil

        found = {}
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if any(node_id in arg for arg in (p.info["cmdline"] or [])):
                    found[p.pid] = p
                    for c in p.children(recursive=True):
                        found[c.pid] = c
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        found.pop(os.getpid(), None)
        return list(found.values())

    def kill_node(self, node_id: str) -> int:
        """SIGKILL every process of one fake node at once, as a spot preemption would end it. Returns how many."""
        import psutil

        procs = self.node_processes(node_id)
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        return len(procs)

    def stop(self) -> list[int]:
        """SIGTERM, then SIGKILL after 10 s, to this cluster's processes only. Returns pids still alive after."""
        import psutil

        procs = self.own_processes()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        psutil.wait_procs(alive, timeout=10)
        if self.log_file:
            self.log_file.close()
        return [p.pid for p in self.own_processes() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def start_fake_cluster(folder: Path, head_cpus: int = 0, timeout: float = 180) -> FakeCluster:
    """Start the head with the autoscaler on the fake provider; returns once a job can be submitted.

    ``head_cpus=0`` keeps work off the head, as on a cloud cluster: every task or actor that asks for a CPU
    makes the autoscaler start a ``cpu_worker`` (or, with a GPU, a ``gpu_worker``)."""
    from conftest import NO_DRAIN_ON_STOP, free_port, wait_for_job_agent, wait_for_port

    ray_bin = str(Path(sys.executable).with_name("ray"))
    port, dash, metrics = free_port(), free_port(), free_port()
    gcs = f"127.0.0.1:{port}"
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "autoscaling.yaml"
    config.write_text(json.dumps(autoscaling_config(gcs, head_cpus), indent=1))  # JSON is YAML
    env = dict(os.environ, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1",
               # fake nodes resolve their address in the monitor process: loopback, as the head's
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", **NO_DRAIN_ON_STOP)
    log = open(folder / "ray-start.log", "w")
    proc = subprocess.Popen([ray_bin, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
                             f"--autoscaling-config={config}", f"--num-cpus={head_cpus}", "--num-gpus=0",
                             f"--object-store-memory={HEAD_OBJECT_STORE}",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                             f"--metrics-export-port={metrics}",
                             *(f"--{flag}={free_port()}" for flag in (
                                 "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                 "runtime-env-agent-port", "ray-client-server-port")),
                             "--disable-usage-stats"], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    cluster = FakeCluster(gcs, f"http://127.0.0.1:{dash}", folder, proc, log)
    try:
        deadline = time.time() + timeout
        wait_for_port(port, deadline)
        wait_for_port(dash, deadline)
        wait_for_job_agent(cluster.dashboard, deadline)
    except BaseException:
        cluster.stop()
        raise
    return cluster


# -- observing the cluster from a connected driver --------------------------------------------------------------
def alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n["Alive"]]


def node_kind(resources: dict) -> str:
    """gpu_worker / cpu_worker / head, from the resources a node declared."""
    if resources.get("GPU"):
        return "gpu_worker"
    return "head" if "node:__internal_head__" in resources else "cpu_worker"


def node_kinds(dashboard: str) -> dict[str, str]:
    """Every node the cluster has had, dead ones too, by id (``ray.nodes()`` forgets a dead node's resources;
    the state API keeps them)."""
    from ray.util.state import list_nodes

    return {n.node_id: node_kind(n.resources_total) for n in list_nodes(address=dashboard, detail=True, limit=1000)}


def count_alive(kind: str) -> int:
    return sum(1 for n in alive_nodes() if node_kind(n["Resources"]) == kind)


def wait_until(predicate, timeout: float, what: str, every: float = 1.0):
    end = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
