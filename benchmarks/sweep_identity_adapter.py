"""Sweep identity-adapter settings on the demo's toy world: how well generated images keep the identity.

    python benchmarks/sweep_identity_adapter.py [--ids 4] [--images 12] [--base diffreid:toy-base] [--out DIR]

For each setting (a few build-config overrides over the demo preset), the first ``--ids`` identities get an
adapter and ``--images`` samples through the library's own build roles (IdentityGenerator); the toy captioner
reads the samples' attributes, compared with the world's ground truth. Prints one table row per setting
(markdown): agreement of upper colour, lower colour, lower type, sleeve and all four together, and seconds.
"""
from __future__ import annotations

import argparse
import hashlib
import copy
import dataclasses
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONV_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in", "proj_out", "ff.net.0.proj",
                "ff.net.2"]
KEYS = ("upper_colour", "lower_colour", "lower_type", "sleeve")

SETTINGS: dict[str, dict] = {
    "prompt only (no adapter)": {"adapter.steps": 0},
    "rank 8, 100 steps, lr 3e-3 (demo v1)": {"adapter.lr": 3e-3, "adapter.train_text_encoder": False},
    "rank 8, 100 steps, lr 1e-3": {"adapter.train_text_encoder": False},
    "rank 8, 100 steps, lr 1e-3, text-encoder LoRA (demo preset)": {},
    "rank 8, 200 steps, lr 1e-3": {"adapter.steps": 200, "adapter.train_text_encoder": False},
    "rank 4, 100 steps, lr 3e-3, prior weight 0.3": {"adapter.rank": 4, "adapter.alpha": 4,
                                                      "adapter.prior_loss_weight": 0.3},
    "demo preset, guidance 3": {"sampler.guidance": 3.0},
    "demo preset + conv/ff LoRA targets": {"adapter.target_modules": CONV_TARGETS},
    "demo preset + conv/ff LoRA targets, guidance 3": {"adapter.target_modules": CONV_TARGETS,
                                                        "sampler.guidance": 3.0},
    "dreambooth, 100 steps, lr 1e-4": {"adapter.mode": "dreambooth", "adapter.lr": 1e-4, "adapter.steps": 100},
    "dreambooth, 200 steps, lr 1e-4, guidance 3": {"adapter.mode": "dreambooth", "adapter.lr": 1e-4,
                                                   "adapter.steps": 200, "sampler.guidance": 3.0},
    "prompt only, img2img 0.6": {"adapter.steps": 0, "sampler.init_strength": 0.6},
    "demo preset, img2img 0.5": {"sampler.init_strength": 0.5},
    "demo preset, img2img 0.6": {"sampler.init_strength": 0.6},
    "demo preset, img2img 0.7": {"sampler.init_strength": 0.7},
    "demo preset, img2img 0.6, guidance 3": {"sampler.init_strength": 0.6, "sampler.guidance": 3.0},
    "dreambooth, 100 steps, lr 1e-4, img2img 0.5": {"adapter.mode": "dreambooth", "adapter.lr": 1e-4,
                                                    "adapter.steps": 100, "sampler.init_strength": 0.5},
    "dreambooth, 100 steps, lr 1e-4, stored as a rank-8 LoRA": {"adapter.mode": "dreambooth", "adapter.lr": 1e-4,
                                                                "adapter.steps": 100,
                                                                "adapter.dreambooth_store": "lora",
                                                                "adapter.extract_rank": 8},
    "dreambooth, 100 steps, lr 1e-4, stored as a rank-32 LoRA": {"adapter.mode": "dreambooth", "adapter.lr": 1e-4,
                                                                 "adapter.steps": 100,
                                                                 "adapter.dreambooth_store": "lora",
                                                                 "adapter.extract_rank": 32},
    "new base: demo preset, text-to-image": {"sampler.init_strength": None},
    "new base: demo preset, text-to-image, 100 steps": {"sampler.init_strength": None, "adapter.steps": 100},
    "new base: demo preset, img2img 0.4": {"sampler.init_strength": 0.4},
    "new base: demo preset, img2img 0.8": {"sampler.init_strength": 0.8},
    "new base: dreambooth, 100 steps, lr 1e-4, text-to-image": {"adapter.mode": "dreambooth", "adapter.lr": 1e-4,
                                                                "adapter.steps": 100, "sampler.init_strength": None},
    "shared LoRA + token, 400 steps, lr 1e-3, img2img 0.5": {"adapter.mode": "shared_lora_ti", "adapter.steps": 400,
                                                             "adapter.lr": 1e-3, "sampler.init_strength": 0.5},
}


def build_config(overrides: dict, base: str, images: int):
    from diffreid.build import BuildConfig
    from diffreid.config import read_yaml, set_dotted

    data = copy.deepcopy(read_yaml(REPO / "diffreid" / "configs" / "demo.yaml")["build"])
    data.pop("ray", None)
    data["base_model"]["path"] = base
    set_dotted(data, "sampler.num_images", images)
    set_dotted(data, "sampler.batch_size", images)
    for key, value in overrides.items():
        set_dotted(data, key, value)
    return BuildConfig.model_validate(data)


def save_grid(rows: list[list], path: Path) -> None:
    """One row of samples per identity, for looking at what the table counts."""
    from PIL import Image

    w, h = rows[0][0].size
    grid = Image.new("RGB", (w * max(len(r) for r in rows), h * len(rows)), "white")
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            grid.paste(image.convert("RGB"), (x * w, y * h))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.resize((grid.width * 2, grid.height * 2)).save(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ids", type=int, default=4)
    p.add_argument("--images", type=int, default=12)
    p.add_argument("--base", default="diffreid:toy-base")
    p.add_argument("--only", action="append", default=[], help="run only settings whose name contains this")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="applied to every setting")
    p.add_argument("--out", default="outputs/sweep-identity-adapter")
    args = p.parse_args(argv)

    import torch
    import yaml

    from diffreid.build import IdentityGenerator, load_base_pipeline, prepare_build
    from diffreid.data.sources import source_root
    from diffreid.data.toyworld import read_attributes
    from diffreid.generation.toy_captioner import ToyCaptioner
    from diffreid.models.assets import resolve_model_path

    torch.manual_seed(0)
    common = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    out = Path(args.out)
    first = build_config({**common, "adapter.steps": 1}, args.base, args.images)
    plan = prepare_build(first, out / "plan", progress=False)
    truth = read_attributes(source_root(first.sources[0], out / "plan")).set_index("pid")
    captioner = ToyCaptioner(resolve_model_path("diffreid:toy-captioner"))
    pipe = load_base_pipeline(first, plan)
    jobs = plan.jobs[:args.ids]
    print("| setting | upper colour | lower colour | lower type | sleeve | all four | s/identity |")
    print("|---|---|---|---|---|---|---|")
    for name, overrides in SETTINGS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        no_adapter = overrides.get("adapter.steps") == 0
        cfg = build_config({**common, **{k: v for k, v in overrides.items() if not no_adapter or k != "adapter.steps"}},
                           args.base, args.images)
        slug = "".join(ch if ch.isalnum() else "-" for ch in name)[:48]
        slug += "-" + hashlib.sha1(name.encode()).hexdigest()[:6] if len(name) > 48 else ""  # long names differ late
        gen = IdentityGenerator(cfg, dataclasses.replace(plan, out=str(out / "runs" / slug)), pipe)
        hits = {k: [] for k in KEYS}
        shown = []
        t0 = time.time()
        for job in jobs:
            if no_adapter:
                from diffreid.build import identity_prompt
                from diffreid.generation.sampler import sample_identity

                prompt = identity_prompt(cfg, plan.captions[job.pid], job.pid)
                images = [g.image for g in sample_identity(pipe, None, prompt, job.pid, cfg.sampler,
                                                           init_images=job.image_paths)]
            else:
                gen.train_adapter(job)
                images = gen.generate(job).images
            shown.append(images[:12])
            row = truth.loc[job.source_pid]
            for attrs in captioner.predict(images):
                for k in KEYS:
                    hits[k].append(attrs[k] == row[k])
        seconds = (time.time() - t0) / len(jobs)
        save_grid(shown, out / "grids" / f"{slug}.png")
        four = np.all([hits[k] for k in KEYS], axis=0)
        cells = [f"{np.mean(hits[k]):.0%}" for k in KEYS] + [f"**{np.mean(four):.0%}**", f"{seconds:.0f}"]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
