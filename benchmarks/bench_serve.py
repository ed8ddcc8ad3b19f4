"""The augmentation service on the tiny toy setup, over real HTTP on 127.0.0.1: latency of upload -> done for
new identities, and of /generate with the adapter resident vs evicted (LRU capacity 2, 3 identities in turn).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_serve.py [--identities 4] [--repeats 12] [--num-images 2]

Prints a Markdown table. Absolute numbers are the tiny model on this machine's CPU (shared with whatever else
runs); the resident/evicted gap is the point.
"""
import argparse
import io
import os
import tempfile
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on loopback
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _headline import headline  # noqa: E402



def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def crops(seed: int, n: int = 4) -> list[tuple[str, bytes]]:
    from diffreid.data.toyworld import render_identity_images, sample_identity

    rng = np.random.default_rng(seed)
    out = []
    for i, image in enumerate(render_identity_images(sample_identity(rng, 7000 + seed), n, rng, 64, 32)):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        out.append((f"crop{i}.png", buf.getvalue()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=4, help="new identities uploaded (>= 3)")
    parser.add_argument("--repeats", type=int, default=12, help="/generate calls per case")
    parser.add_argument("--num-images", type=int, default=2, help="images per /generate call")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per replica")
    args = parser.parse_args()
    if args.identities < 3:
        parser.error("--identities must be >= 3 (the evicted case cycles 3 identities through a cache of 2)")

    import httpx
    from ray import serve

    from diffreid.distributed.cluster import free_loopback_port, init_ray
    from serve_apps.app import AppArgs, build_app
    from serve_apps.settings import toy_build_config

    root = tempfile.mkdtemp(prefix="bench-serve-")
    settings = {"storage": f"{root}/store", "assets_dir": f"{root}/assets", "adapter_cache": 2,
                "torch_threads": args.threads, "worker_poll_s": 0.1, "build": toy_build_config().model_dump(mode="json")}
    init_ray(num_cpus=4)
    port = free_loopback_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(AppArgs(settings=settings)), name="diffreid", route_prefix="/")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)

    # 1. upload -> done, one identity at a time (no queueing in the figure)
    done_s, ids = [], []
    for k in range(args.identities):
        start = time.perf_counter()
        r = client.post("/v1/identities", files=[("images", c) for c in crops(k)], data={"num_images": 4})
        r.raise_for_status()
        ident = r.json()["id"]
        while (state := client.get(f"/v1/identities/{ident}").json())["state"] not in ("done", "failed"):
            time.sleep(0.05)
        if state["state"] != "done":
            raise SystemExit(f"identity {ident} failed: {state['reason']}")
        done_s.append(time.perf_counter() - start)
        ids.append(ident)

    def generate(ident: str) -> tuple[float, bool]:
        start = time.perf_counter()
        r = client.post(f"/v1/identities/{ident}/generate", json={"num_images": args.num_images})
        r.raise_for_status()
        return time.perf_counter() - start, r.json()["adapter"]["loaded_now"]

    # 2. resident: the same identity again and again (first call warms it and is not counted)
    generate(ids[0])
    resident = [generate(ids[0]) for _ in range(args.repeats)]
    # 3. evicted: three identities in turn through an LRU of two, so every call reloads
    evicted = [generate(ids[(i % 3)]) for i in range(args.repeats + 3)][3:]

    rows = [("upload -> done (4 crops, 4 images)", done_s, None),
            (f"generate {args.num_images} img, adapter resident", [t for t, _ in resident], resident),
            (f"generate {args.num_images} img, adapter evicted", [t for t, _ in evicted], evicted)]
    print("\n| case | n | p50 ms | p95 ms | reloads |")
    print("|---|---|---|---|---|")
    for name, secs, calls in rows:
        reloads = "-" if calls is None else f"{sum(loaded for _, loaded in calls)}/{len(calls)}"
        ms = [1000 * s for s in secs]
        print(f"| {name} | {len(ms)} | {percentile(ms, 50):.0f} | {percentile(ms, 95):.0f} | {reloads} |")
        headline(f"Serve latency, {name}", round(percentile(ms, 50)), "ms p50", f"p95 {percentile(ms, 95):.0f} ms")
    serve.shutdown()


if __name__ == "__main__":
    main()
