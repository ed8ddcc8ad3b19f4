"""DI — the Attribute Reference Set (paper §3.1): images the *base* model draws from the token-less LPE
prompts. They are the prior-preservation targets of adapter training (paper eq. 1)."""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from diffreid.config import StageConfig
from diffreid.io import atomic_write_json, save_image_atomic

MANIFEST = "refset.json"


class RefSetConfig(StageConfig):
    num_images: int = Field(16, gt=0, description="paper: 200; 16 keeps a CPU run short, set 200 on a GPU")
    steps: int = Field(30, gt=0, description="DDIM steps: near-converged for SD-1.x; tests use 2")
    guidance: float = Field(7.5, ge=0, description="SD-1.x's usual classifier-free guidance scale")
    height: int = Field(512, gt=0, description="2:1 person aspect at SD-1.x's native scale (tests: 64)")
    width: int = Field(256, gt=0, description="2:1 person aspect at SD-1.x's native scale (tests: 32)")
    seed: int = Field(0, description="image i uses seed + i, so any image can be regenerated alone")
    batch_size: int = Field(4, gt=0, description="images per pipeline call; raise on a large GPU")
    share_across_identities: bool = Field(
        True, description="paper: one set of 200 images per source; False makes one set per identity")


def reference_set_dir(root, cfg: RefSetConfig, pid) -> Path:
    """Where an identity's reference set lives: one shared folder, or one per identity."""
    return Path(root) / ("shared" if cfg.share_across_identities else str(pid))


def plan(prompts: list[str], cfg: RefSetConfig) -> list[dict]:
    """Image i: prompt i mod len(prompts), seed cfg.seed + i, file ref_<i>.png."""
    return [{"file": f"ref_{i:05d}.png", "prompt": prompts[i % len(prompts)], "seed": cfg.seed + i}
            for i in range(cfg.num_images)]


def enabled_adapters(pipe) -> list[str]:
    """Names of PEFT adapters that currently change the pipeline's output (loaded and not disabled)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    names: set[str] = set()
    for part in (getattr(pipe, "unet", None), getattr(pipe, "text_encoder", None)):
        for module in part.modules() if part is not None else ():
            if isinstance(module, BaseTunerLayer) and not module.disable_adapters:
                names.update(module.active_adapters)
    return sorted(names)


def generate_reference_set(pipe, prompts: list[str], cfg: RefSetConfig, out_dir) -> list[Path]:
    """Generate (or reuse, or finish) the reference set in ``out_dir`` and return its image paths.

    ``refset.json`` records the settings and each image's prompt and seed. A folder made with the same
    prompts and settings is reused; images already written are kept and only missing ones are drawn; a
    folder made with other prompts or settings is an error (choose another folder)."""
    import torch
    from tqdm import tqdm

    prompts = [" ".join(p.split()) for p in prompts]
    if not prompts or not all(prompts):
        raise ValueError("reference set: need at least one non-empty prompt")
    adapters = enabled_adapters(pipe)
    if adapters:
        raise ValueError(f"reference set must come from the base model, but adapters {adapters} are active: "
                         "call pipe.disable_lora() (or unload them) first")
    factor = pipe.vae_scale_factor
    if cfg.height % factor or cfg.width % factor:
        raise ValueError(f"reference set height/width {cfg.height}x{cfg.width} must be divisible by the "
                         f"VAE factor {factor} of this pipeline")
    out = Path(out_dir)
    settings = cfg.model_dump(mode="json", exclude={"batch_size", "share_across_identities"})
    items = plan(prompts, cfg)
    manifest = {"settings": settings, "prompts": prompts, "images": items}
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        try:
            existing = json.loads(manifest_path.read_text())
        except json.JSONDecodeError:
            existing = None
        if existing is None or {k: existing.get(k) for k in ("settings", "prompts", "images")} != manifest:
            raise ValueError(f"{manifest_path} describes a reference set made with other prompts or settings; "
                             "remove the folder or choose another")
    todo = [it for it in items if not (out / it["file"]).is_file()]
    if todo or not manifest_path.is_file():
        atomic_write_json(manifest_path, {**manifest, "complete": False})
    batches = [todo[i:i + cfg.batch_size] for i in range(0, len(todo), cfg.batch_size)]
    for batch in tqdm(batches, desc="reference set", unit="batch", disable=None):
        # CPU generators: the same seed gives the same image on any device
        generators = [torch.Generator("cpu").manual_seed(it["seed"]) for it in batch]
        result = pipe(prompt=[it["prompt"] for it in batch], num_inference_steps=cfg.steps,
                      guidance_scale=cfg.guidance, height=cfg.height, width=cfg.width, generator=generators)
        for it, image in zip(batch, result.images):
            save_image_atomic(image, out / it["file"])
    if todo or not json.loads(manifest_path.read_text()).get("complete"):
        atomic_write_json(manifest_path, {**manifest, "complete": True})
    return [out / it["file"] for it in items]
