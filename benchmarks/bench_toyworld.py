"""Toy-world rendering speed on one core: images per CPU-second for rendering alone and for rendering + JPEG encoding,
at 64x32 and 128x64, in RGB and infrared. Target: well over 500 images/s at 64x32.

    python benchmarks/bench_toyworld.py [--n 2000]
"""
from __future__ import annotations

import argparse
import io
import os
import time
from pathlib import Path
import sys

import numpy as np

from diffreid.data.toyworld import make_camera, render_person, sample_identity

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _headline import headline  # noqa: E402


def bench(height: int, width: int, modality: str, n: int, encode: bool) -> tuple[float, float]:
    """(images per CPU-second, images per wall-second); they differ only when the core is shared."""
    rng = np.random.default_rng(0)
    people = [sample_identity(rng, pid) for pid in range(50)]
    cams = [make_camera(c) for c in range(1, 7)]
    for cam in cams:  # warm the per-camera background cache, as a world render does
        render_person(people[0], cam, None, rng, height, width, modality)
    cpu, wall = time.process_time(), time.perf_counter()
    for k in range(n):
        img = render_person(people[k % 50], cams[k % 6], None, rng, height, width, modality)
        if encode:
            img.save(io.BytesIO(), format="JPEG", quality=92)
    return n / (time.process_time() - cpu), n / (time.perf_counter() - wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="images per row")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    rows = []
    for height, width in ((64, 32), (128, 64)):
        for modality in ("rgb", "ir"):
            render = bench(height, width, modality, args.n, encode=False)
            full = bench(height, width, modality, args.n, encode=True)
            rows.append((f"{height}x{width}", modality, render, full))
    print("images/s on one core (per CPU-second; per wall-second in brackets, lower when the core is shared)")
    print("| size | modality | render | render + JPEG |")
    print("|---|---|---:|---:|")
    for size, modality, render, full in rows:
        print(f"| {size} | {modality} | {render[0]:,.0f} ({render[1]:,.0f}) | {full[0]:,.0f} ({full[1]:,.0f}) |")
        headline(f"toy world render + JPEG, {size} {modality}", round(full[0]), "images/CPU-s")


if __name__ == "__main__":
    main()
