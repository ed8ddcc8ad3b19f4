"""The augmentation service under sustained load, over real HTTP on 127.0.0.1 (tiny toy setup).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_serve_load.py [--clients 16] [--seconds 120] [--requests 1000]

Bounded: at most --seconds of load and --requests requests, loopback only. Three finished identities, an
adapter LRU of two (so /generate meets resident and evicted adapters), then --clients threads mixing status
polls, image listings and /generate calls, while a burst of uploads goes beyond the queue bound and honours
each 429's Retry-After. Prints per route: requests, p50/p95/p99 latency, answers by status; then the 5xx
count (must be 0), the 429s and whether every rejected upload got in after waiting Retry-After, and each
replica's resident memory before and after (growth within 10% is the target).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _headline import headline  # noqa: E402
from bench_serve import crops, free_port  # noqa: E402

MIX = (("status", 0.45), ("images", 0.3), ("generate", 0.25))


def replica_memory() -> dict[str, int]:
    """Resident bytes of every live Serve replica of the app, by deployment and process: the replicas are
    processes of the local cluster this benchmark started (its descendants), named ``ray::ServeReplica:...``."""
    import psutil

    out = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
            if title.startswith("ray::ServeReplica:diffreid:"):
                deployment = title.split(":")[4].split(".")[0].split()[0]
                out[f"{deployment}#{proc.pid}"] = proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
            pass
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=120, help="load phase bound")
    p.add_argument("--requests", type=int, default=1000, help="load phase bound (burst uploads included)")
    p.add_argument("--burst", type=int, default=6, help="uploads sent at once beyond the queue bound")
    args = p.parse_args()

    import httpx
    from ray import serve

    from diffreid.distributed.cluster import init_ray
    from serve_apps.app import AppArgs, build_app
    from serve_apps.settings import toy_build_config

    root = tempfile.mkdtemp(prefix="bench-serve-load-")
    settings = {"storage": f"{root}/store", "assets_dir": f"{root}/assets", "adapter_cache": 2, "torch_threads": 1,
                "worker_poll_s": 0.2, "limits": {"max_queued_jobs": 2, "retry_after_s": 5},
                "build": toy_build_config().model_dump(mode="json")}
    init_ray(num_cpus=4)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(AppArgs(settings=settings)), name="diffreid", route_prefix="/")
    base = f"http://127.0.0.1:{port}"

    # 1. three finished identities, one after the other (the queue bound of 2 is for the load phase)
    ids = []
    with httpx.Client(base_url=base, timeout=300) as client:
        for k in range(3):
            r = client.post("/v1/identities", files=[("images", c) for c in crops(100 + k)], data={"num_images": 2})
            r.raise_for_status()
            ids.append(r.json()["id"])
            while client.get(f"/v1/identities/{ids[-1]}").json()["state"] not in ("done", "failed"):
                time.sleep(0.2)
        for ident in ids:  # every adapter loaded once: the load phase measures steady state, not first loads
            client.post(f"/v1/identities/{ident}/generate", json={"num_images": 1}).raise_for_status()
    memory_before = replica_memory()

    # 2. load: clients + one burst of uploads
    lock = threading.Lock()
    latency: dict[str, list[float]] = defaultdict(list)
    statuses: dict[str, Counter] = defaultdict(Counter)
    budget = {"left": args.requests}
    deadline = time.time() + args.seconds
    burst_result = {"rejected": 0, "retry_after": set(), "accepted_after_wait": 0, "never_accepted": 0}

    def take() -> bool:
        with lock:
            if budget["left"] <= 0 or time.time() > deadline:
                return False
            budget["left"] -= 1
            return True

    def record(route: str, seconds: float, status: int) -> None:
        with lock:
            latency[route].append(seconds)
            statuses[route][status] += 1

    def client_loop(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=base, timeout=120) as client:
            while take():
                route = rng.choices([m for m, _ in MIX], [w for _, w in MIX])[0]
                ident = rng.choice(ids)
                t0 = time.perf_counter()
                if route == "status":
                    r = client.get(f"/v1/identities/{ident}")
                elif route == "images":
                    r = client.get(f"/v1/identities/{ident}/images", params={"include_dropped": True})
                else:
                    r = client.post(f"/v1/identities/{ident}/generate", json={"num_images": 1})
                record(route, time.perf_counter() - t0, r.status_code)

    def upload_until_accepted(seed: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as client:
            for attempt in range(6):
                if not take():
                    break
                t0 = time.perf_counter()
                r = client.post("/v1/identities", files=[("images", c) for c in crops(200 + seed)],
                                data={"num_images": 1, "steps": 5})
                record("upload", time.perf_counter() - t0, r.status_code)
                if r.status_code != 429:
                    if attempt:
                        with lock:
                            burst_result["accepted_after_wait"] += 1
                    return
                with lock:
                    burst_result["rejected"] += 1
                    burst_result["retry_after"].add(r.headers.get("retry-after"))
                time.sleep(float(r.headers.get("retry-after", 5)))
            with lock:
                burst_result["never_accepted"] += 1

    started = time.time()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(args.clients)]
    threads += [threading.Thread(target=upload_until_accepted, args=(i,)) for i in range(args.burst)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    load_seconds = time.time() - started
    with httpx.Client(base_url=base, timeout=300) as client:  # let the burst's jobs finish before measuring memory
        end = time.time() + 300
        while time.time() < end and any(client.get(f"/v1/identities/{i}").json()["state"] not in ("done", "failed")
                                        for i in client.get("/v1/identities").json()["identities"]):
            time.sleep(1)
    memory_after = replica_memory()

    # 3. report
    total = sum(len(v) for v in latency.values())
    print(f"\n{total} requests in {load_seconds:.0f} s from {args.clients} clients + {args.burst} burst uploads "
          f"(127.0.0.1)\n")
    print("| route | requests | p50 ms | p95 ms | p99 ms | answers |")
    print("|---|---|---|---|---|---|")
    for route in ("status", "images", "generate", "upload"):
        ms = np.asarray(latency.get(route, [])) * 1000
        if not len(ms):
            continue
        answers = ", ".join(f"{code}: {n}" for code, n in sorted(statuses[route].items()))
        print(f"| {route} | {len(ms)} | {np.percentile(ms, 50):.0f} | {np.percentile(ms, 95):.0f} | "
              f"{np.percentile(ms, 99):.0f} | {answers} |")
        headline(f"Serve under load, {route}", round(float(np.percentile(ms, 95))), "ms p95",
                 f"{len(ms)} requests, {args.clients} clients")
    server_errors = sum(n for c in statuses.values() for code, n in c.items() if code >= 500)
    print(f"\n5xx answers: {server_errors} (target 0)")
    print(f"429 on the burst: {burst_result['rejected']} (Retry-After {sorted(burst_result['retry_after'])}); "
          f"accepted after waiting: {burst_result['accepted_after_wait']}; never accepted within 6 tries: "
          f"{burst_result['never_accepted']}")
    print("\n| replica | before MiB | after MiB | growth |")
    print("|---|---|---|---|")
    for name in sorted(memory_before):
        if name in memory_after:
            before, after = memory_before[name] / 2 ** 20, memory_after[name] / 2 ** 20
            print(f"| {name} | {before:.0f} | {after:.0f} | {100 * (after - before) / before:+.1f}% |")
    serve.shutdown()


if __name__ == "__main__":
    main()
