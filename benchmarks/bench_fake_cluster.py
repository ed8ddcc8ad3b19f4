"""The build job on Ray's fake multi-node autoscaler (tests/fake_cluster.py) with 1, 2 and 3 GPU nodes: time from
`ray job submit` to the first GPU node, wall time and identities/hour, each run from zero GPU nodes.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_fake_cluster.py [--ids 6] [--nodes 1 2 3] [--work DIR]

The GPU nodes are declared, not real, and every fake node shares this machine's cores: the figures show what
scaling out costs (node start-up, actor start-up, per-node model loads) and that placement works, not GPU
speed-up. With 2 cores, more than two generator nodes cannot run faster than two.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _headline import headline  # noqa: E402


def build_config(ids: int, generators: int) -> str:
    from test_ray_build import toy_build_yaml

    return toy_build_yaml(ids) + (f"ray: {{generator_actors: {generators}, generator_gpus: 1, scorer_actors: 1, "
                                  "adapter_cache: 2}\nruntime: {device: auto}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ids", type=int, default=6, help="identities per build")
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3], help="GPU nodes (generator actors) per run")
    ap.add_argument("--work", help="folder for the cluster and the builds (default: a temporary one)")
    args = ap.parse_args()

    importlib.import_module("conftest")  # first: the loopback-only and auth settings Ray reads on import
    import ray

    import fake_cluster as fc
    from test_ray_build import submit

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-fake-cluster-"))
    cluster = fc.start_fake_cluster(work / "cluster")
    rows = []
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        for nodes in args.nodes:
            fc.wait_until(lambda: fc.count_alive("gpu_worker") == 0, fc.IDLE_TIMEOUT_MINUTES * 60 + 120,
                          "no gpu_worker before the run")
            config = work / f"build-{nodes}.yaml"
            config.write_text(build_config(args.ids, nodes))
            out = work / f"dp-{nodes}"
            first_gpu = {}
            t0 = time.time()

            def watch():
                while "t" not in first_gpu and time.time() - t0 < 600:
                    if fc.count_alive("gpu_worker"):
                        first_gpu["t"] = time.time() - t0
                    time.sleep(0.5)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            done = submit(cluster.dashboard, config, out, timeout=1800)
            wall = time.time() - t0
            first_gpu.setdefault("t", float("nan"))
            if done.returncode:
                raise SystemExit(f"the build with {nodes} GPU node(s) failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
            timings = json.loads((out / "timings.json").read_text())
            rows.append((nodes, first_gpu["t"], wall, timings))
            print(f"{nodes} GPU node(s): {wall:.0f} s", flush=True)
    finally:
        ray.shutdown()
        cluster.stop()

    print(f"\n### Build job on the fake autoscaling cluster: {args.ids} identities, each run from zero GPU nodes\n")
    print("| GPU nodes (generators) | submit -> first GPU node s | prepare s | generate+score+write s | wall s "
          "| identities/hour (wall) | identities/hour (excl. prepare) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for nodes, first, wall, t in rows:
        rest = wall - t["prepare_s"]
        print(f"| {nodes} | {first:.1f} | {t['prepare_s']:.1f} | {rest:.1f} | {wall:.1f} | "
              f"{3600 * t['identities_generated'] / wall:.0f} | {3600 * t['identities_generated'] / rest:.0f} |")
        headline(f"fake cluster build, {nodes} GPU node(s)", round(3600 * t["identities_generated"] / wall),
                 "identities/hour (wall)", "declared GPUs on 2 shared CPU cores")
    print("\nwall: `ray job submit` to the job's end, including node and actor start-up. The GPUs are declared: "
          "every node shares this machine's 2 cores, so this shows the cost of scaling out, not a speed-up.")


if __name__ == "__main__":
    main()
