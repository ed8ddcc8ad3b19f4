"""Identity adapters and sampler on the tiny pipeline: cost per identity, switch time, sampler throughput.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_adapters.py [--ids 4] [--steps 20] [--threads 1]

Prints Markdown tables. Absolute numbers are for the tiny model on this machine's CPU; the ratios are the point.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
import sys

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _headline import headline  # noqa: E402


def timed(fn, repeat: int = 1) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    from diffusers import StableDiffusionPipeline

    from diffreid.data.toyworld import render_identity_images, sample_identity
    from diffreid.generation.adapters import (AdapterConfig, activate, deactivate, load_identity_adapter,
                                              train_identity_adapter, train_shared_lora_ti)
    from diffreid.generation.sampler import SamplerConfig, sample_identity as sample_images
    from diffreid.models import PipelineConfig, load_pipeline
    from diffreid.models.tiny import build_tiny_pipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ids", type=int, default=4, help="identities adapted per mode")
    ap.add_argument("--steps", type=int, default=20, help="training steps per identity")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--images", type=int, default=16, help="images sampled per throughput run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="bench_adapters_"))
    tiny = build_tiny_pipeline(work / "tiny")
    pipe = load_pipeline(PipelineConfig(path=str(tiny), runtime={"device": "cpu"}))
    rng = np.random.default_rng(0)
    people = {pid: render_identity_images(sample_identity(rng, pid), 6, rng, 64, 32) for pid in range(args.ids)}
    refs = render_identity_images(sample_identity(rng, 999), 8, rng, 64, 32)
    common = dict(height=64, width=32, instance_batch_size=4, prior_batch_size=4, runtime={"device": "cpu"})

    # 1. adaptation cost per identity
    rows, dirs = [], {}
    for mode, lr in (("lora", 1e-3), ("dreambooth", 1e-4)):
        cfg = AdapterConfig.load(mode=mode, steps=args.steps, lr=lr, **common)
        seconds, size = [], []
        for pid, images in people.items():
            r = train_identity_adapter(pipe, images, "a photo of sks person", refs, "a photo of person", cfg,
                                       work / mode / str(pid))
            seconds.append(r.seconds)
            size.append(r.bytes)
            dirs.setdefault(mode, []).append(r.dir)
        rows.append((mode, args.steps, sum(seconds) / len(people), sum(size) / len(people)))
    cfg = AdapterConfig.load(mode="shared_lora_ti", steps=args.steps * args.ids, lr=1e-3, **common)
    r = train_shared_lora_ti(pipe, {pid: (im, "a person") for pid, im in people.items()}, cfg, work / "shared",
                             ref_images=refs, ref_prompt="a photo of person")
    rows.append(("shared_lora_ti", args.steps * args.ids, r.seconds / args.ids, r.bytes / args.ids))
    print(f"\n### Adaptation per identity (tiny model, {args.ids} identities, 64x32, batch 4+4, "
          f"{args.threads} CPU thread(s))\n")
    print("| mode | steps per run | seconds per identity | stored bytes per identity |")
    print("|---|---|---|---|")
    for mode, steps, sec, size in rows:
        print(f"| {mode} | {steps} | {sec:.2f} | {size / 1024:.1f} KiB |")
        headline(f"adapter storage per identity, {mode} (tiny model)", round(size / 1024, 1), "KiB")

    # 2. switching adapters on a resident pipeline vs loading a fresh pipeline
    for i, d in enumerate(dirs["lora"][:2]):
        load_identity_adapter(pipe, d, f"lora{i}")
    for i, d in enumerate(dirs["dreambooth"][:2]):
        load_identity_adapter(pipe, d, f"db{i}")
    flips = {"lora": ("lora0", "lora1"), "dreambooth": ("db0", "db1")}
    print("\n### Adapter switch\n")
    print("| operation | milliseconds |")
    print("|---|---|")
    for kind, (a, b) in flips.items():
        ms = timed(lambda: (activate(pipe, a), activate(pipe, b)), repeat=20) / 2 * 1e3
        print(f"| activate a resident {kind} adapter | {ms:.2f} |")
        headline(f"adapter switch, resident {kind}", round(ms, 2), "ms")
    deactivate(pipe)
    names = iter(range(10 ** 6))
    ms = timed(lambda: load_identity_adapter(pipe, dirs["lora"][2 % len(dirs["lora"])], f"tmp{next(names)}"),
               repeat=5) * 1e3
    print(f"| load a LoRA file into the resident pipeline | {ms:.1f} |")
    headline("adapter switch, load a LoRA file", round(ms, 1), "ms")
    ms = timed(lambda: load_identity_adapter(pipe, dirs["dreambooth"][-1], f"tmp{next(names)}"), repeat=3) * 1e3
    print(f"| load a DreamBooth UNet into the resident pipeline | {ms:.1f} |")
    ms = timed(lambda: StableDiffusionPipeline.from_pretrained(tiny, safety_checker=None,
                                                               requires_safety_checker=False), repeat=3) * 1e3
    print(f"| load a fresh pipeline (from_pretrained) | {ms:.1f} |")

    # 3. sampler throughput
    print(f"\n### Sampler ({args.images} images, 64x32, DDIM 10 steps, lora adapter active)\n")
    print("| batch size | images/s |")
    print("|---|---|")
    for batch in (1, 8):
        s = SamplerConfig.load(num_images=args.images, steps=10, guidance=4.0, height=64, width=32,
                               output_height=64, output_width=32, batch_size=batch)
        sample_images(pipe, "lora0", "a photo of sks person", 0, s.model_copy(update={"num_images": batch}))
        sec = timed(lambda: sample_images(pipe, "lora0", "a photo of sks person", 0, s))
        print(f"| {batch} | {args.images / sec:.1f} |")


if __name__ == "__main__":
    main()
