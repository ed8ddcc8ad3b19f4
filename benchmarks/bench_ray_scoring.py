"""Re-ID scoring through the Ray Data scoring pool (1 and 2 actors) vs the same filter in a plain loop, and
identities/hour of the whole build on a tiny toy config (Ray job vs one process).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_ray_scoring.py [--ids 16] [--images-per-id 32] [--cpus 4]
        [--build-config configs/toy-ray.yaml] [--build-set adapter.steps=4 ...] [--skip-build] [--work DIR]

Starts a local Ray cluster on 127.0.0.1. Prints Markdown tables. The pool's wall time includes starting its
actors (each loads the Re-ID model and the FAISS gallery), as a job pays it; "startup" is that cost alone.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
import sys

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _headline import headline  # noqa: E402


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
REPO = Path(__file__).resolve().parents[1]


def bench_config(ids: int) -> str:
    return f"""
_BASE_: {REPO / "configs" / "toy.yaml"}
sources:
  - name: toy
    toyworld: {{ids_train: {ids}, ids_test: 4, cams: 4, height: 64, width: 32, seed: 0}}
    max_identities: {ids}
    min_images: 4
"""


def score_rows(plan, per_id: int) -> list[dict]:
    """Stand-ins for generated batches: each identity's own source crops, cycled to ``per_id`` images."""
    from PIL import Image

    rows = []
    for job in plan.jobs:
        paths = [job.image_paths[i % len(job.image_paths)] for i in range(per_id)]
        images = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8) for p in paths])
        rows.append({"pid": job.pid, "images": images})
    return rows


def plain_loop(cfg, plan, rows) -> tuple[float, float, int]:
    from PIL import Image

    from diffreid.distributed.actors import ScorerActor

    t0 = time.perf_counter()
    scorer = ScorerActor(cfg, plan)
    startup = time.perf_counter() - t0
    kept = 0
    for row in rows:
        _, keep = scorer.score(row["pid"], [Image.fromarray(im) for im in row["images"]])
        kept += int(np.sum(keep))
    return time.perf_counter() - t0, startup, kept


def ray_pool(cfg, plan, rows, actors: int) -> tuple[float, float, int]:
    """Wall time, time to the first scored identity (pool start-up + one identity), images kept."""
    import ray
    from ray.data import ActorPoolStrategy

    from diffreid.distributed.actors import ScorerActor

    t0 = time.perf_counter()
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        ScorerActor, batch_size=1, compute=ActorPoolStrategy(size=actors), num_cpus=1,
        fn_constructor_args=(cfg, plan))
    kept, first = 0, None
    for row in ds.iter_rows():
        first = first or time.perf_counter() - t0
        kept += int(np.sum(row["kept"]))
    return time.perf_counter() - t0, first, kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ids", type=int, default=16, help="toy identities scored")
    ap.add_argument("--images-per-id", type=int, default=128, help="images per identity (Diff-Person: ~150)")
    ap.add_argument("--cpus", type=int, default=4, help="CPUs the local Ray cluster advertises")
    ap.add_argument("--build-config", default=str(REPO / "configs" / "toy-ray.yaml"))
    ap.add_argument("--build-set", nargs="*", default=[], help="overrides for the build config")
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--work", help="working folder, reused across runs (default: a new temp folder)")
    args = ap.parse_args()

    import torch

    from diffreid.build import prepare_build
    from diffreid.distributed.build import RayBuildJobConfig, build_diff_person_ray
    from diffreid.distributed.cluster import init_ray

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-ray-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "bench.yaml").write_text(bench_config(args.ids))
    cfg = RayBuildJobConfig.load(work / "bench.yaml")
    plan = prepare_build(cfg, work / "plan", progress=False)
    rows = score_rows(plan, args.images_per_id)
    n_images = len(rows) * args.images_per_id
    init_ray(num_cpus=args.cpus)

    per_id = args.images_per_id
    wall, startup, kept_loop = plain_loop(cfg, plan, rows)
    results = [("plain loop, 1 process", torch.get_num_threads(), wall, startup, n_images / (wall - startup),
                kept_loop)]
    for actors in (1, 2):
        wall, first, kept = ray_pool(cfg, plan, rows, actors)
        assert kept == kept_loop, f"the pool kept {kept} images, the loop {kept_loop}"
        results.append((f"Ray Data pool, {actors} actor{'s' * (actors > 1)}", 1, wall, first,
                        (n_images - per_id) / (wall - first), kept))

    print(f"\n### Re-ID scoring: {len(rows)} identities x {per_id} images = {n_images} images "
          f"(64x32, {cfg.filter_reid.model.backbone}, FAISS gallery of {len(plan.source_records['toy'])})\n")
    print("| scorer | torch threads/worker | wall s | start-up s | images/s (wall) | images/s (after start-up) "
          "| kept |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, threads, wall, start, steady, kept in results:
        print(f"| {name} | {threads} | {wall:.1f} | {start:.1f} | {n_images / wall:.0f} | {steady:.0f} | {kept} |")
        headline(f"Re-ID scoring, {name}", round(n_images / wall), "images/s (wall)")
    print("\nstart-up: the loop's scorer construction; the pool's time to its first scored identity (actors "
          "start, load the Re-ID model and FAISS gallery, score one identity).")

    if args.skip_build:
        return
    import json

    from diffreid.build import build_diff_person

    bcfg = RayBuildJobConfig.load(args.build_config, overrides=args.build_set)
    rows = []
    for name, build in (("Ray job (actor pools)", build_diff_person_ray), ("one process", build_diff_person)):
        t0 = time.perf_counter()
        report = build(bcfg, tempfile.mkdtemp(prefix="build-", dir=work), progress=False)
        total = time.perf_counter() - t0
        timings = json.loads((report.parent / "timings.json").read_text())
        rows.append((name, timings["identities_generated"], timings["prepare_s"], total - timings["prepare_s"], total))
    print(f"\n### Whole build ({Path(args.build_config).name} {' '.join(args.build_set)})\n")
    print("| build | identities | prepare s | generate+score+write s | total s | identities/hour | "
          "identities/hour (excl. prepare) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, n, prep, rest, total in rows:
        print(f"| {name} | {n} | {prep:.1f} | {rest:.1f} | {total:.1f} | {3600 * n / total:.0f} | "
              f"{3600 * n / rest:.0f} |")

if __name__ == "__main__":
    main()
