"""Base diffusion models: load a Stable-Diffusion-1.x pipeline, build a tiny offline one."""
from diffreid.models.pipeline import (
    SCHEDULERS,
    PipelineConfig,
    PipelineLoadError,
    load_pipeline,
    make_scheduler,
)

__all__ = ["SCHEDULERS", "PipelineConfig", "PipelineLoadError", "load_pipeline", "make_scheduler"]
