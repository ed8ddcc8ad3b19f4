"""`diffreid demo`: the main job (``run_all``) on the embedded toy world with the shipped toy models.

A local loopback Ray cluster runs LPE captions (toy captioner) -> reference set -> identity LoRAs -> sampling
-> Re-ID CTF filter -> Diff-Person-toy -> Ray Train pre-training -> few-shot fine-tune + evaluation, and
writes OUT/report.html. The presets are the YAML files beside this module (``configs/demo*.yaml``).
"""
from __future__ import annotations

from pathlib import Path

PRESETS = Path(__file__).resolve().parent / "configs"


def demo_config(quick: bool = False) -> Path:
    return PRESETS / ("demo-quick.yaml" if quick else "demo.yaml")


def run_demo(out_dir: str | Path, quick: bool = False, overrides: list[str] | tuple = (),
             address: str | None = None) -> Path:
    """Run the demo preset into ``out_dir`` and return the report's path."""
    from diffreid.distributed.run_all import run_all

    return run_all(demo_config(quick), out_dir, overrides, address)
