"""Models shipped inside the package (trained by `python -m ray_jobs.train_toy_base`), named ``diffreid:<name>``,
and the toy-fallback rule every stage follows for its base model (``resolve_base_model``)."""
from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
PREFIX = "diffreid:"
TINY_MODEL = "diffreid:tiny"  # the tiny random SD-1.x pipeline, built offline into the run's OUT/models/tiny-sd
SHIPPED = {"toy-base": "toy text-to-image pipeline (diffusers folder)",
           "toy-captioner": "toy attribute captioner (LPE captioner=toy)"}


def resolve_model_path(path: str) -> str:
    """``diffreid:toy-base`` -> the shipped folder; any other path or hub id is returned unchanged."""
    if not path.startswith(PREFIX):
        return path
    name = path[len(PREFIX):]
    if path == TINY_MODEL:
        raise FileNotFoundError(f"model {path!r} is built per run: resolve it with resolve_base_model(path, OUT, ...)")
    if name not in SHIPPED:
        raise FileNotFoundError(f"model {path!r}: diffreid ships {', '.join(PREFIX + n for n in SHIPPED)}, and "
                                f"{TINY_MODEL} names the tiny random pipeline")
    folder = ASSETS / name
    if not folder.is_dir():
        raise FileNotFoundError(f"shipped model {path!r} is missing at {folder}: re-install diffreid, or rebuild it "
                                "with `python -m ray_jobs.train_toy_base`")
    return str(folder)


def resolve_base_model(path: str, out_dir: str | Path, seed: int = 0, height: int = 64, width: int = 32) -> str:
    """The toy-fallback rule of build, serve and VI expansion alike: ``diffreid:tiny`` is the tiny random
    pipeline, built once into OUT/models/tiny-sd (seeded, sized for ``height`` x ``width`` samples); any other
    path (an SD-1.x folder, a hub id, ``diffreid:toy-base``) is returned unchanged for ``load_pipeline``.
    The same rule for data: a dataset with an empty root and a ``toyworld`` beside it is rendered into OUT."""
    if path != TINY_MODEL:
        return path
    from diffreid.models.tiny import build_tiny_pipeline

    return str(build_tiny_pipeline(Path(out_dir) / "models" / "tiny-sd", seed=seed, sample_height=height,
                                   sample_width=width))
