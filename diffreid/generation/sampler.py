"""Sampler: many diverse, identity-consistent images per identity, each regenerable from its record.

A prompt is the identity prompt (with its IIR token) plus attribute phrases drawn from a vocabulary
(clothing, carried items, actions, camera poses, scenes - the diversity the paper's DI aims at). Every image
has its own seed, derived from (seed_base, pid, index), and its own generator, so an image does not depend on
which other images share its batch beyond float rounding; the record also keeps the batch it was drawn in, so
:func:`regenerate` reproduces it bit for bit.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Sequence

from PIL import Image
from pydantic import Field, model_validator

from diffreid.config import StageConfig
from diffreid.generation.adapters.config import check_person_aspect, check_resolution
from diffreid.generation.adapters.store import activate, active_adapter, deactivate, loaded_adapters
from diffreid.errors import DiffreidError
from diffreid.models.pipeline import SchedulerName, img2img_view, make_scheduler

DEFAULT_VOCABULARY = {
    "clothing": ["wearing a jacket", "wearing a coat", "wearing a t-shirt", "wearing a hoodie", "wearing shorts",
                 "wearing jeans", "wearing a dress", "wearing a sweater"],
    "carried": ["carrying a backpack", "carrying a handbag", "holding a phone", "carrying a shopping bag",
                "holding an umbrella", "pulling a suitcase"],
    "action": ["walking", "standing", "running", "talking on the phone", "looking down", "waiting"],
    "pose": ["front view", "back view", "side view", "seen from above", "full body shot"],
    "scene": ["on a campus street", "in a shopping mall", "at a crosswalk", "in a park", "at night under street lights",
              "in the rain", "at a train station"],
}


class SamplerError(DiffreidError):
    """Sampling cannot start: a missing or unreadable input the config asks for."""


class AttributeVocabulary(StageConfig):
    clothing: list[str] = Field(default_factory=lambda: list(DEFAULT_VOCABULARY["clothing"]),
                                description="new clothing the source sequence never showed")
    carried: list[str] = Field(default_factory=lambda: list(DEFAULT_VOCABULARY["carried"]),
                               description="carried items")
    action: list[str] = Field(default_factory=lambda: list(DEFAULT_VOCABULARY["action"]), description="actions")
    pose: list[str] = Field(default_factory=lambda: list(DEFAULT_VOCABULARY["pose"]), description="camera poses")
    scene: list[str] = Field(default_factory=lambda: list(DEFAULT_VOCABULARY["scene"]), description="scenes")

    def categories(self) -> dict[str, list[str]]:
        return {k: v for k, v in self.model_dump().items() if v}


class SamplerConfig(StageConfig):
    """How many images per identity and how they are drawn."""

    num_images: int = Field(150, ge=1, description="Diff-Person averages 150 images per identity (777K / 5,183)")
    steps: int = Field(30, ge=1, description="DDIM at 30 steps is close to converged for SD-1.x")
    guidance: float = Field(7.5, ge=0, description="SD-1.x's usual classifier-free guidance")
    scheduler: SchedulerName = Field("ddim", description="deterministic (eta 0), so a seed fixes the image")
    height: int = Field(512, ge=8, description="native 2:1 person aspect (tests: 64)")
    width: int = Field(256, ge=8, description="native 2:1 person aspect (tests: 32)")
    enforce_person_aspect: bool = Field(True, description="Re-ID crops are 2:1")
    output_height: int = Field(256, ge=8, description="Re-ID input size (BoT/fast-reid use 256x128)")
    output_width: int = Field(128, ge=8, description="Re-ID input size")
    batch_size: int = Field(8, ge=1, description="images per pipeline call; fits a 24 GB GPU at 512x256")
    seed_base: int = Field(0, description="with (pid, index) it fixes every image's seed")
    negative_prompt: str = Field("blurry, low quality, deformed, cropped, multiple people",
                                 description="steers away from the usual SD failure modes for person crops")
    vocabulary: AttributeVocabulary = Field(default_factory=AttributeVocabulary,
                                            description="diversity phrases by category (paper: DI attributes)")
    phrases_per_prompt: int = Field(2, ge=0, description="categories sampled per prompt; 0 = identity prompt only")
    lora_scale: float = Field(1.0, ge=0, description="LoRA strength; below 1 trades identity for diversity")
    init_strength: float | None = Field(None, gt=0, le=1, description="None: text-to-image, the paper. A value: "
                                        "image-to-image from one of the identity's own crops noised to this "
                                        "strength (SDEdit; DA-Fusion augments this way), so colours and build "
                                        "survive a base model that follows prompts poorly (the toy base)")

    @model_validator(mode="after")
    def _check(self) -> "SamplerConfig":
        check_person_aspect(self.height, self.width, self.enforce_person_aspect)
        return self


@dataclass
class GeneratedImage:
    image: Image.Image
    record: dict


def image_seed(seed_base: int, pid: int, index: int) -> int:
    digest = hashlib.blake2b(f"{seed_base}:{pid}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2 ** 63 - 1)


def diverse_prompt(identity_prompt: str, seed: int, vocabulary: AttributeVocabulary, k: int) -> str:
    rng = random.Random(seed)
    categories = vocabulary.categories()
    chosen = rng.sample(sorted(categories), min(k, len(categories)))
    return ", ".join([identity_prompt, *(rng.choice(categories[c]) for c in chosen)])


def load_init_image(path: str, width: int, height: int) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB").resize((width, height), Image.BICUBIC)
    except (OSError, ValueError) as err:
        raise SamplerError(f"init image {path}: cannot be read ({err})") from None


def _generate(pipe, prompts: list[str], seeds: list[int], rec: dict,
              inits: list[str] | None = None) -> list[Image.Image]:
    """One pipeline call with one generator per image; the scheduler is swapped in only for the call.
    ``inits``: one init image path per prompt (image-to-image at ``rec["init_strength"]``)."""
    import torch

    runner = pipe if inits is None else img2img_view(pipe)
    original = runner.scheduler
    runner.scheduler = make_scheduler(rec["scheduler"], original.config)
    try:
        kwargs = {"cross_attention_kwargs": {"scale": rec["lora_scale"]}} if rec["adapter_mode"] in (
            "lora", "shared_lora_ti") else {}
        if inits is None:
            kwargs.update(height=rec["height"], width=rec["width"])
        else:
            kwargs.update(image=[load_init_image(p, rec["width"], rec["height"]) for p in inits],
                          strength=rec["init_strength"])
        images = runner(prompts, negative_prompt=[rec["negative_prompt"]] * len(prompts),
                        num_inference_steps=rec["steps"], guidance_scale=rec["guidance"],
                        generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="pil",
                        **kwargs).images
    finally:
        runner.scheduler = original
    size = (rec["output_width"], rec["output_height"])
    return [im if im.size == size else im.resize(size, Image.BICUBIC) for im in images]


def _use_adapter(pipe, adapter: str | None, scale: float) -> str | None:
    if adapter is None:
        deactivate(pipe)
        return None
    activate(pipe, adapter, scale)
    return loaded_adapters(pipe)[adapter].mode


Job = tuple[int, int, str, Sequence[str]]  # pid, index, identity prompt, the identity's init images (maybe none)


def _init_paths(cfg: SamplerConfig, chunk: list[Job], seeds: list[int]) -> list[str] | None:
    if cfg.init_strength is None:
        return None
    for pid, _, _, inits in chunk:
        if not inits:
            raise SamplerError(f"sampler.init_strength={cfg.init_strength} needs init images of pid {pid} (the "
                               "identity's own crops); none were given. Set init_strength to null for "
                               "text-to-image")
    return [str(inits[seed % len(inits)]) for (_, _, _, inits), seed in zip(chunk, seeds)]


def _run(pipe, adapter: str | None, jobs: list[Job], cfg: SamplerConfig) -> list[GeneratedImage]:
    """``jobs`` batched in order, ``cfg.batch_size`` at a time."""
    from tqdm.auto import tqdm

    check_resolution(pipe, cfg.height, cfg.width)
    mode = _use_adapter(pipe, adapter, cfg.lora_scale)
    base = {"negative_prompt": cfg.negative_prompt, "adapter": adapter, "adapter_mode": mode,
            "lora_scale": cfg.lora_scale, "scheduler": cfg.scheduler, "steps": cfg.steps, "guidance": cfg.guidance,
            "height": cfg.height, "width": cfg.width, "output_height": cfg.output_height,
            "output_width": cfg.output_width, "init_strength": cfg.init_strength}
    out: list[GeneratedImage] = []
    starts = range(0, len(jobs), cfg.batch_size)
    for start in tqdm(starts, desc="sampling", disable=len(starts) < 2 or not _tty()):
        chunk = jobs[start:start + cfg.batch_size]
        seeds = [image_seed(cfg.seed_base, pid, index) for pid, index, _, _ in chunk]
        prompts = [diverse_prompt(job[2], s, cfg.vocabulary, cfg.phrases_per_prompt) for job, s in zip(chunk, seeds)]
        inits = _init_paths(cfg, chunk, seeds)
        images = _generate(pipe, prompts, seeds, base, inits)
        for position, ((pid, index, _, _), seed, prompt, image) in enumerate(zip(chunk, seeds, prompts, images)):
            record = {**base, "pid": pid, "index": index, "prompt": prompt, "seed": seed,
                      "init_image": inits[position] if inits else None,
                      "batch": {"prompts": prompts, "seeds": seeds, "position": position, "init_images": inits}}
            out.append(GeneratedImage(image=image, record=record))
    return out


def _tty() -> bool:
    import sys

    return sys.stderr.isatty()


def sample_identity(pipe, adapter: str | None, identity_prompt: str, pid: int, cfg: SamplerConfig,
                    start_index: int = 0, init_images: Sequence[str] = ()) -> list[GeneratedImage]:
    """``cfg.num_images`` images of one identity (indices ``start_index``...), batches of one adapter.
    ``init_images``: the identity's own crops, used when ``cfg.init_strength`` is set."""
    jobs = [(pid, start_index + i, identity_prompt, init_images) for i in range(cfg.num_images)]
    return _run(pipe, adapter, jobs, cfg)


def sample_mixed(pipe, items: Sequence[tuple[int, str]], cfg: SamplerConfig, adapter: str | None = None,
                 start_index: int = 0, init_images: dict[int, Sequence[str]] | None = None) -> list[GeneratedImage]:
    """shared_lora_ti: ``cfg.num_images`` per (pid, identity prompt) item, identities interleaved so every
    batch mixes them; ``adapter`` is the shared adapter that holds all their tokens."""
    inits = init_images or {}
    jobs = [(pid, start_index + i, prompt, inits.get(pid, ())) for i in range(cfg.num_images) for pid, prompt in items]
    return _run(pipe, adapter, jobs, cfg)


def regenerate(pipe, record: dict) -> Image.Image:
    """The image a record describes, recomputed (its adapter must be loaded in ``pipe``)."""
    previous = active_adapter(pipe)
    _use_adapter(pipe, record["adapter"], record["lora_scale"])
    batch = record["batch"]
    try:
        return _generate(pipe, batch["prompts"], batch["seeds"], record, batch.get("init_images"))[batch["position"]]
    finally:
        if previous is None:
            deactivate(pipe)
        else:
            activate(pipe, previous)
