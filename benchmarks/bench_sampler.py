"""Sampler batching: images/s of the shipped toy base model (64x32, DDIM 20 steps, guidance 4) by batch size.

    python benchmarks/bench_sampler.py [--images 32] [--threads 2]

Prints a Markdown table. One pipeline call per batch; classifier-free guidance doubles each UNet batch.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _headline import headline  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()

    import torch

    from diffreid.generation.sampler import SamplerConfig, sample_identity
    from diffreid.models.pipeline import PipelineConfig, load_pipeline

    torch.set_num_threads(args.threads)
    pipe = load_pipeline(PipelineConfig(path="diffreid:toy-base"))
    prompt = "a photo of person, a person with short black hair wearing a red shirt, blue trousers"
    rows = []
    for batch in (1, 4, 16, 32):
        cfg = SamplerConfig(num_images=args.images, steps=20, guidance=4.0, height=64, width=32, output_height=64,
                            output_width=32, batch_size=batch, negative_prompt="", phrases_per_prompt=0)
        sample_identity(pipe, None, prompt, 1, cfg.model_copy(update={"num_images": batch}))  # warm-up
        t0 = time.perf_counter()
        sample_identity(pipe, None, prompt, 1, cfg)
        rows.append((batch, args.images / (time.perf_counter() - t0)))
    print(f"toy base model, {args.images} images per run, 64x32, DDIM 20 steps, {args.threads} torch threads\n")
    print("| batch size | images/s | vs batch 1 |\n|---:|---:|---:|")
    for batch, ips in rows:
        print(f"| {batch} | {ips:.1f} | {ips / rows[0][1]:.1f}x |")
        headline(f"sampler, toy base 64x32, batch {batch}", round(ips, 1), "images/s")


if __name__ == "__main__":
    main()
