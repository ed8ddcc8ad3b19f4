"""Load a Stable-Diffusion-1.x text-to-image pipeline from a local folder or a hub id."""
from __future__ import annotations

import json
import os
import re
import weakref
from pathlib import Path
from typing import Literal

from pydantic import Field

from diffreid.config import RuntimeConfig, StageConfig
from diffreid.errors import DiffreidError
from diffreid.models.assets import resolve_model_path

SchedulerName = Literal["ddim", "ddpm", "dpm++", "euler"]
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
}
PIPELINE_CLASSES = ("StableDiffusionPipeline",)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class PipelineLoadError(DiffreidError, ValueError):
    """A model path is missing, is not a diffusers SD pipeline folder, or a hub id cannot be fetched."""


def offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


class PipelineConfig(StageConfig):
    path: str = Field("", description="local diffusers folder, hub id, or diffreid:toy-base (shipped); "
                                       "no default model is downloaded")
    local_files_only: bool = Field(False, description="never reach the hub; HF_HUB_OFFLINE=1 forces it too")
    scheduler: SchedulerName = Field("ddim", description="DDIM: deterministic, good in few steps")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="device, dtype, seed")


def make_scheduler(name: str, scheduler_config):
    """A scheduler of kind ``name`` built from an existing scheduler's config (same betas/timesteps)."""
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}: expected one of {sorted(SCHEDULERS)}")
    return getattr(diffusers, SCHEDULERS[name]).from_config(scheduler_config)


def check_pipeline_folder(folder: Path) -> None:
    index = folder / "model_index.json"
    if not index.is_file():
        raise PipelineLoadError(f"model path {folder} is not a diffusers pipeline folder: "
                                "expected a model_index.json beside unet/, vae/, text_encoder/, tokenizer/, "
                                "scheduler/ (as written by save_pretrained or `diffreid models tiny`)")
    try:
        cls = json.loads(index.read_text()).get("_class_name")
    except (json.JSONDecodeError, AttributeError) as err:
        raise PipelineLoadError(f"{index} is not valid JSON: {err}") from None
    if cls not in PIPELINE_CLASSES:
        raise PipelineLoadError(f"{index} describes a {cls!r}; expected a Stable-Diffusion-1.x "
                                f"text-to-image pipeline ({', '.join(PIPELINE_CLASSES)})")


def load_pipeline(cfg: PipelineConfig):
    """The base pipeline on ``cfg.runtime``'s device and dtype, safety checker off, progress bar off."""
    from diffusers import StableDiffusionPipeline

    if not cfg.path:
        raise PipelineLoadError("pipeline.path is empty: give a local diffusers folder or a hub id "
                                "(`diffreid models tiny --out DIR` makes a tiny offline one)")
    device, dtype = cfg.runtime.torch_device(), cfg.runtime.torch_dtype()
    try:
        folder = Path(resolve_model_path(cfg.path)).expanduser()
    except FileNotFoundError as err:
        raise PipelineLoadError(str(err)) from None
    offline = cfg.local_files_only or offline_env()
    if folder.is_dir():
        check_pipeline_folder(folder)
        source = str(folder)
    elif folder.exists():
        raise PipelineLoadError(f"model path {folder} is a file; expected a diffusers pipeline folder")
    elif HUB_ID.match(cfg.path) and not cfg.path.startswith("."):
        source = cfg.path
    else:
        raise PipelineLoadError(f"model path {folder} does not exist (and is not a hub id like 'org/name')")
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            source, dtype=dtype, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            local_files_only=offline)
    except (OSError, ValueError) as err:
        where = "the local cache (offline: HF_HUB_OFFLINE/local_files_only)" if offline else "the hub"
        if source == cfg.path and not folder.is_dir():
            raise PipelineLoadError(f"model {cfg.path!r} is not a local folder and could not be loaded "
                                    f"from {where}: {str(err).splitlines()[0] if str(err) else err!r}") from None
        raise PipelineLoadError(f"could not load the pipeline in {folder}: {err}") from None
    pipe.scheduler = make_scheduler(cfg.scheduler, pipe.scheduler.config)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


_IMG2IMG_VIEWS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def img2img_view(pipe):
    """An image-to-image pipeline over ``pipe``'s own modules (no copy: loaded adapters act in both)."""
    from diffusers import StableDiffusionImg2ImgPipeline

    view = _IMG2IMG_VIEWS.get(pipe)
    if view is None:
        size = pipe.unet.config.sample_size
        if not isinstance(size, int):  # its constructor compares sample_size with an int (a deprecation check)
            pipe.unet.register_to_config(sample_size=max(size))
        try:
            view = StableDiffusionImg2ImgPipeline(**{**pipe.components, "requires_safety_checker": False})
        finally:
            pipe.unet.register_to_config(sample_size=size)
        view.set_progress_bar_config(disable=True)
        _IMG2IMG_VIEWS[pipe] = view
    return view
