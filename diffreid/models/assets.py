"""Models shipped inside the package (trained by `python -m ray_jobs.train_toy_base`), named ``diffreid:<name>``."""
from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
PREFIX = "diffreid:"
SHIPPED = {"toy-base": "toy text-to-image pipeline (diffusers folder)",
           "toy-captioner": "toy attribute captioner (LPE captioner=toy)"}


def resolve_model_path(path: str) -> str:
    """``diffreid:toy-base`` -> the shipped folder; any other path or hub id is returned unchanged."""
    if not path.startswith(PREFIX):
        return path
    name = path[len(PREFIX):]
    if name not in SHIPPED:
        raise FileNotFoundError(f"model {path!r}: diffreid ships {', '.join(PREFIX + n for n in SHIPPED)}")
    folder = ASSETS / name
    if not folder.is_dir():
        raise FileNotFoundError(f"shipped model {path!r} is missing at {folder}: re-install diffreid, or rebuild it "
                                "with `python -m ray_jobs.train_toy_base`")
    return str(folder)
