"""One command that measures the GPU path on the SD-1.5-shaped random model (same compute as the real one).

    python benchmarks/gpu_check.py --out benchmarks/GPU-RESULTS.md          # on a CUDA machine, ~8 min
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu-dry.md           # the same code, tiny, on CPU
    python benchmarks/gpu_check.py --cpu-sd15 --out benchmarks/CPU-SD15-RESULTS.md  # real size on CPU, ~12 min,
                                                                             # ~20 GB RAM: run it alone

Measures generation images/s at 512x256 (fp16, bf16; batch 1/8/16/32; channels-last and torch.compile against
the plain pipeline), LoRA and DreamBooth training steps/s with the peak memory beside the memory plan's estimate,
adapter activate vs load vs pipeline reload, VRAM per resident LoRA, Re-ID filter images/s, FAISS search of
100k x 2048, one generator actor per GPU through Ray (aggregate images/s and the device each got), each beside
its anchor (the paper: 10 images per 15 s on an RTX 4090; 5k identities in 3 days on
8x RTX 4090, ~400 GPU-s per identity). Writes a Markdown file and prints it.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@dataclass(frozen=True)
class Plan:
    device: str
    dtypes: tuple[str, ...]
    batches: tuple[int, ...]
    height: int
    width: int
    steps: int  # DDIM steps per image
    train_steps: int
    reid_backbone: str
    reid_size: tuple[int, int]
    reid_images: int
    gallery: tuple[int, int]  # images x dims
    queries: int
    variants: tuple[str, ...] = ()  # generation options timed against the plain pipeline
    ray_images: int = 0  # images per generator actor in the Ray section (0: skipped)


FULL = Plan("cuda", ("fp16", "bf16"), (1, 8, 16, 32), 512, 256, 30, 10, "resnet50", (256, 128), 512,
            (100_000, 2048), 1000, ("channels-last", "torch.compile"), 64)
DRY = Plan("cpu", ("fp32",), (1, 2), 64, 32, 2, 2, "resnet18", (64, 32), 16, (1000, 64), 10, ("channels-last",), 4)
CPU_SD15 = Plan("cpu", ("fp32",), (2,), 512, 256, 2, 2, "resnet50", (256, 128), 32, (100_000, 2048), 100)
PAPER_IMAGES_PER_S = 10 / 15  # RTX 4090, the paper's generation speed
PAPER_GPU_S_PER_ID = 3 * 24 * 3600 * 8 / 5000  # 5k identities, 3 days, 8 GPUs


def clock(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def generation_variants(model, plan: Plan, base: dict, sample_images, sync) -> list[str]:
    """Images/s with channels-last UNet memory and with a compiled UNet, against the plain pipeline."""
    import torch

    from diffreid.generation.sampler import SamplerConfig
    from diffreid.models import PipelineConfig, load_pipeline

    dtype, batch = plan.dtypes[-1], plan.batches[-1]
    cfg = SamplerConfig(num_images=batch, batch_size=batch, steps=plan.steps, height=plan.height, width=plan.width,
                        output_height=plan.height, output_width=plan.width, phrases_per_prompt=0)
    lines = ["### Generation options", "", "| option | dtype | batch | images/s | vs plain |", "|---|---|---|---|---|"]
    for variant in plan.variants:
        pipe = load_pipeline(PipelineConfig(path=str(model), runtime={"device": plan.device, "dtype": dtype}))
        if variant == "channels-last":
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        elif variant == "torch.compile":
            pipe.unet = torch.compile(pipe.unet, mode="max-autotune-no-cudagraphs", fullgraph=False)
        warm = clock(lambda: sample_images(pipe, None, "a photo of a person", 0, cfg), sync)  # compiles here
        rate = batch / clock(lambda: sample_images(pipe, None, "a photo of a person", 0, cfg), sync)
        plain = base[(dtype, batch)]
        lines.append(f"| {variant} (first call {warm:.1f} s) | {dtype} | {batch} | {rate:.2f} | {rate / plain:.2f}x |")
        pipe = None
    return lines + [""]


def ray_generators(model: str, plan: Plan, dtype: str, single_rate: float) -> list[str]:
    """One generator actor per GPU through Ray (each loads the pipeline on the device Ray assigns it), sampling
    at once: aggregate images/s against one pipeline alone. Without GPUs, one CPU actor checks the path."""
    import ray

    from diffreid.distributed.cluster import init_ray

    init_ray()
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        actors = max(gpus, 1)

        @ray.remote(num_gpus=1 if gpus else 0, num_cpus=1)
        class Generator:
            def __init__(self):
                import os

                from diffreid.models import PipelineConfig, load_pipeline

                self.pipe = load_pipeline(PipelineConfig(path=model, runtime={"device": plan.device, "dtype": dtype}))
                self.visible = os.environ.get("CUDA_VISIBLE_DEVICES", "-")

            def sample(self, n: int) -> tuple[str, str, float]:
                import time

                import torch

                from diffreid.generation.sampler import SamplerConfig, sample_identity

                batch = plan.batches[-1]
                cfg = SamplerConfig(num_images=n, batch_size=batch, steps=plan.steps, height=plan.height,
                                    width=plan.width, output_height=plan.height, output_width=plan.width,
                                    phrases_per_prompt=0)
                start = time.perf_counter()
                sample_identity(self.pipe, None, "a photo of a person", 0, cfg)
                if self.pipe.device.type == "cuda":
                    torch.cuda.synchronize()
                return self.visible, str(self.pipe.device), time.perf_counter() - start

        pool = [Generator.remote() for _ in range(actors)]
        ray.get([g.sample.remote(plan.batches[-1]) for g in pool])  # warm-up
        start = time.perf_counter()
        done = ray.get([g.sample.remote(plan.ray_images) for g in pool])
        wall = time.perf_counter() - start
    finally:
        ray.shutdown()
    rate = actors * plan.ray_images / wall
    lines = ["## One generator actor per GPU (Ray)", "",
             f"{actors} actor(s) × {plan.ray_images} images at batch {plan.batches[-1]} ({dtype}): **{rate:.2f} "
             f"images/s** in all, {rate / (actors * single_rate):.0%} of {actors} × one pipeline alone "
             f"({single_rate:.2f} images/s).", "", "| actor | CUDA_VISIBLE_DEVICES | device | seconds |", "|---|---|---|---|"]
    lines += [f"| {i} | {vis} | {dev} | {sec:.1f} |" for i, (vis, dev, sec) in enumerate(done)]
    return lines + [""]


def main(argv=None) -> int:
    import numpy as np
    import torch

    from diffreid.data.toyworld import render_identity_images, sample_identity
    from diffreid.generation.adapters import (AdapterConfig, activate, deactivate, delete_adapter,
                                              load_identity_adapter, train_identity_adapter)
    from diffreid.generation.refset import RefSetConfig
    from diffreid.generation.sampler import SamplerConfig, sample_identity as sample_images
    from diffreid.memory import plan_parts
    from diffreid.io import atomic_write_json, atomic_write_text
    from diffreid.models import PipelineConfig, load_pipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/GPU-RESULTS.md", help="Markdown file to write")
    ap.add_argument("--model", help="SD-1.x pipeline folder (default: build the random SD-1.5 shape in --work)")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp folder)")
    ap.add_argument("--dry-run", action="store_true", help="tiny model, CPU, a few steps: checks the script")
    ap.add_argument("--cpu-sd15", action="store_true", help="the SD-1.5 shape at 512x256 on CPU, 2 steps each: "
                    "time and peak memory of the real architecture through the project's API (no GPU needed)")
    args = ap.parse_args(argv)
    plan = DRY if args.dry_run else CPU_SD15 if args.cpu_sd15 else FULL
    if plan.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run with --dry-run to check the script on CPU", file=sys.stderr)
        return 2
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check_"))
    cuda = plan.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    title = ("dry run: tiny model on CPU" if args.dry_run else "SD-1.5 shape, random weights, on CPU" if args.cpu_sd15
             else torch.cuda.get_device_name(0))
    lines = [f"# GPU check ({title})", "",
             f"torch {torch.__version__}; images {plan.height}x{plan.width}; DDIM {plan.steps} steps; "
             f"anchors: the paper's {PAPER_IMAGES_PER_S:.2f} images/s and ~{PAPER_GPU_S_PER_ID:.0f} GPU-s per "
             "identity on an RTX 4090.", ""]

    if args.model:
        model = Path(args.model)
    elif args.dry_run:
        from diffreid.models.tiny import build_tiny_pipeline

        model = build_tiny_pipeline(work / "tiny", sample_height=plan.height, sample_width=plan.width)
    else:
        from diffreid.models.random import build_random_pipeline

        model = build_random_pipeline(work / "sd15-random")

    # 1. generation throughput
    lines += ["## Generation", "", "| dtype | batch | images/s | vs paper | peak memory GB |", "|---|---|---|---|---|"]
    if not cuda:
        lines.insert(-2, "On CPU, peak memory is the process's peak resident set so far (it only grows).\n")
    base_images_per_s = {}
    for dtype in plan.dtypes:
        pipe = load_pipeline(PipelineConfig(path=str(model), runtime={"device": plan.device, "dtype": dtype}))
        for batch in plan.batches:
            cfg = SamplerConfig(num_images=batch, batch_size=batch, steps=plan.steps, height=plan.height,
                                width=plan.width, output_height=plan.height, output_width=plan.width,
                                phrases_per_prompt=0)
            sample_images(pipe, None, "a photo of a person", 0, cfg.model_copy(update={"num_images": 1,
                                                                                      "batch_size": 1}))
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            seconds = clock(lambda: sample_images(pipe, None, "a photo of a person", 0, cfg), sync)
            rate = batch / seconds
            base_images_per_s[(dtype, batch)] = rate
            peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else peak_rss_gb()
            lines.append(f"| {dtype} | {batch} | {rate:.2f} | {rate / PAPER_IMAGES_PER_S:.1f}x | {peak:.1f} |")
        pipe = None  # frees the GPU before the next dtype
    lines.append("")
    if plan.variants:
        lines += generation_variants(model, plan, base_images_per_s, sample_images, sync)

    # 2. adapter training and switching
    dtype = plan.dtypes[-1]
    pipe = load_pipeline(PipelineConfig(path=str(model), runtime={"device": plan.device, "dtype": dtype}))
    rng = np.random.default_rng(0)
    person = render_identity_images(sample_identity(rng, 1), 4, rng, plan.height, plan.width)
    refs = render_identity_images(sample_identity(rng, 2), 4, rng, plan.height, plan.width)
    lines += ["## Adapter training", "", "Planned: `diffreid.memory`'s estimate for the same run, to compare with the "
              "measured peak.", "", "| mode | steps/s | stored MB | GPU-s per identity at the mode's default steps "
              "| peak memory GB | planned GB |", "|---|---|---|---|---|---|"]
    adapters, train_rates = {}, {}
    for mode in ("lora", "dreambooth"):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        cfg = AdapterConfig.load(mode=mode, steps=plan.train_steps, height=plan.height, width=plan.width,
                                 instance_batch_size=1, prior_batch_size=1, gradient_checkpointing=cuda,
                                 checkpoint_every=10_000, runtime={"device": plan.device, "dtype": dtype})
        result = train_identity_adapter(pipe, person, "a photo of sks person", refs, "a photo of person", cfg,
                                        work / "adapters" / mode)
        rate = plan.train_steps / result.seconds
        default_steps = AdapterConfig(mode=mode).resolved_steps
        adapters[mode] = result.dir
        train_rates[mode] = rate
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else peak_rss_gb()
        planned = plan_parts(cfg, SamplerConfig(height=plan.height, width=plan.width, batch_size=1),
                             RefSetConfig(height=plan.height, width=plan.width, batch_size=1), cfg.runtime,
                             str(model), adapter_cache=0).training_bytes / 2**30
        lines.append(f"| {mode} | {rate:.2f} | {result.bytes / 2**20:.1f} | {default_steps / rate:.0f} | {peak:.1f} "
                     f"| {planned:.1f} |")
    lines.append("")

    sync()
    load_s = clock(lambda: load_identity_adapter(pipe, adapters["lora"], "probe"), sync)
    activate_s = clock(lambda: activate(pipe, "probe"), sync)
    deactivate(pipe)
    delete_adapter(pipe, "probe")
    reload_s = clock(lambda: load_pipeline(PipelineConfig(path=str(model), runtime={"device": plan.device,
                                                                                    "dtype": dtype})), sync)
    before = torch.cuda.memory_allocated() if cuda else 0
    resident = 4
    for k in range(resident):
        load_identity_adapter(pipe, adapters["lora"], f"resident{k}")
    per_lora = ((torch.cuda.memory_allocated() - before) / resident) if cuda else (
        sum(p.stat().st_size for p in Path(adapters["lora"]).glob("*.safetensors")))
    free = torch.cuda.mem_get_info()[0] if cuda else float("nan")
    lines += ["## Adapter switching", "", "| what | seconds |", "|---|---|",
              f"| activate a resident LoRA | {activate_s:.3f} |", f"| load a LoRA from disk | {load_s:.3f} |",
              f"| reload the pipeline | {reload_s:.2f} |", "",
              f"One resident LoRA costs {per_lora / 2**20:.1f} MB"
              + (f"; {free / per_lora:.0f} more fit in the free memory." if cuda else " (file size; no GPU)."), ""]
    pipe = None

    # 3. Re-ID filter and FAISS search
    from diffreid.config import RuntimeConfig
    from diffreid.filtering import FaissGallery, model_extractor
    from diffreid.reid.model import ReIDModelConfig, build_reid_model, save_reid_model

    reid_dir = work / "reid"
    model_cfg = ReIDModelConfig(backbone=plan.reid_backbone)
    reid = build_reid_model(model_cfg, 10)
    reid.input_size = plan.reid_size
    save_reid_model(reid, model_cfg, reid_dir)
    extract = model_extractor(reid_dir, RuntimeConfig(device=plan.device), batch_size=64)
    crops = render_identity_images(sample_identity(rng, 3), plan.reid_images, rng, *plan.reid_size)
    extract(crops[:2])
    reid_s = clock(lambda: extract(crops), sync)
    n, dim = plan.gallery
    feats = np.random.default_rng(0).standard_normal((n, dim)).astype("float32")
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    gallery = FaissGallery.build(feats, np.arange(n) % 5000, use_gpu=cuda)
    queries = feats[:plan.queries]
    search_s = clock(lambda: gallery.search(queries, 256), lambda: None)
    lines += ["## Filter", "", "| what | rate |", "|---|---|",
              f"| Re-ID features ({plan.reid_backbone}, {plan.reid_size[0]}x{plan.reid_size[1]}) | "
              f"{plan.reid_images / reid_s:.0f} images/s |",
              f"| FAISS flat-IP search, {n:,} x {dim}, k=256 ({'GPU' if cuda else 'CPU'}) | "
              f"{plan.queries / search_s:.0f} queries/s |", ""]
    if plan.ray_images:
        dtype = plan.dtypes[-1]
        lines += ray_generators(str(model), plan, dtype, base_images_per_s[(dtype, plan.batches[-1])])
    text = "\n".join(lines)
    atomic_write_text(args.out, text)
    figures = {"device": lines[0], "steps": plan.steps, "height": plan.height, "width": plan.width,
               "images_per_s": {f"{d}/{b}": v for (d, b), v in base_images_per_s.items()},
               "train_steps_per_s": train_rates, "train_batch": 2}
    atomic_write_json(Path(args.out).with_suffix(".json"), figures)  # read by `diffreid plan --gpu-results`
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
