"""Pre-training throughput on the tiny config: data loader alone vs 1 and 2 Ray Train workers (CPU).

Answers: is the loader or the model the bottleneck, and what does a second DDP worker buy on 2 cores?
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
import sys

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _headline import headline  # noqa: E402


os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def loader_images_per_s(cfg, records, batches: int = 20) -> float:
    import torch

    from diffreid.data.types import relabel
    from diffreid.reid.pretrain import ImageListDataset, build_train_transform

    recs, _ = relabel(records)
    loader = torch.utils.data.DataLoader(ImageListDataset(recs, build_train_transform(cfg)),
                                         batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=0)
    n, t0 = 0, time.perf_counter()
    while n < batches * cfg.batch_size:
        for images, _ in loader:
            n += images.shape[0]
            if n >= batches * cfg.batch_size:
                break
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--ids", type=int, default=24)
    args = ap.parse_args()

    from diffreid.data import load_dataset
    from diffreid.data.toyworld import ToyWorldConfig, render_world
    from diffreid.distributed.cluster import init_ray
    from diffreid.distributed.train import pretrain_with_ray
    from diffreid.reid.pretrain import PretrainConfig

    tmp = Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
    world = render_world(ToyWorldConfig(ids_train=args.ids, ids_test=2, cams=4, height=64, width=32), tmp / "w")
    records = load_dataset("market_layout", world).train
    base = ["backbone=resnet18", "height=64", "width=32", f"epochs={args.epochs}", "warmup_epochs=0",
            "batch_size=32", "loader_workers=0", "runtime.device=cpu"]
    rows = [("data loader alone (1 process)", loader_images_per_s(PretrainConfig.load(overrides=base), records))]
    init_ray(num_cpus=2)
    for workers in (1, 2):
        cfg = PretrainConfig.load(overrides=base + [f"ray.num_workers={workers}", f"ray.storage_path={tmp / 'ray'}"])
        result = pretrain_with_ray(cfg, records, tmp / f"out{workers}", run_name=f"bench{workers}")
        history = json.loads((tmp / f"out{workers}" / "recipe.json").read_text())["history"]
        rows.append((f"Ray Train, {workers} worker(s), gloo DDP", max(h["images_per_s"] for h in history)))
        del result
    print(f"{len(records)} images, resnet18 64x32, batch 32 (global), {args.epochs} epochs, best epoch\n")
    print("| what | images/s |\n|---|---:|")
    for name, ips in rows:
        print(f"| {name} | {ips:.1f} |")
        headline(f"pre-training throughput, {name}", round(ips, 1), "images/s")


if __name__ == "__main__":
    main()
