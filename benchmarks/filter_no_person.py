"""Does the build's Re-ID confidence filter ever keep an image that shows no person? On a finished toy-world build:
person-free images (the source world's empty camera scenes, uniform noise, flat grey) are scored by the build's
own filter, each claimed as every generated identity, and counted against the build's threshold.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/filter_no_person.py outputs/demo/diff-person [--per-kind 12]

Prints a markdown table: per kind of image, how many (image, claimed identity) pairs there were, how many the
filter would keep, and the highest score, beside the build's own generated images for scale.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def person_free_images(world, n: int, seed: int = 0) -> dict[str, list]:
    from PIL import Image

    from diffreid.data.toyworld import render_background, world_cameras

    rng = np.random.default_rng(seed)
    h, w = world.height, world.width
    cams, scenes = world_cameras(world), []
    for k in range(n):
        bg = render_background(cams[k % len(cams)], h, w)
        top, left = int(rng.integers(bg.height - h + 1)), int(rng.integers(bg.width - w + 1))
        scenes.append(bg.crop((left, top, left + w, top + h)))
    noise = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for _ in range(n)]
    grey = [Image.new("RGB", (w, h), (int(v),) * 3) for v in np.linspace(40, 215, n)]
    return {"empty camera scene": scenes, "uniform noise": noise, "flat grey": grey}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build", help="a finished Diff-Person build folder of the toy world")
    ap.add_argument("--per-kind", type=int, default=12, help="person-free images of each kind")
    args = ap.parse_args()

    from diffreid.build import IdentityScorer, load_build_config, prepare_build
    from diffreid.diffperson.manifest import read_manifest
    from diffreid.filtering.reid_ctf import similarity_floor

    root = Path(args.build).resolve()
    cfg = load_build_config(root)
    worlds = [s for s in cfg.sources if s.toyworld is not None]
    if not worlds:
        raise SystemExit(f"{root}: not a toy-world build (no source with a toyworld section)")
    plan = prepare_build(cfg, root, progress=False)  # every step is cached in the build: nothing is retrained
    scorer = IdentityScorer(cfg, plan)
    threshold = cfg.filter.threshold_of(cfg.filter.decide_by)
    jobs = [j for j in plan.jobs if j.source == worlds[0].name]

    df = read_manifest(root)
    gen = df[df["origin"] == "generated"]
    column = f"score_{cfg.filter.decide_by}"
    print(f"{root}: filter {cfg.filter.decide_by}, threshold {threshold:g}, {len(jobs)} claimed identities\n")
    print("| images | (image, claimed identity) pairs | kept | highest score |\n|---|---:|---:|---:|")
    kept_pairs = []
    for kind, images in person_free_images(worlds[0].toyworld, args.per_kind).items():
        results = [scorer.score(job.source, job.source_pid, images)[0] for job in jobs]
        scores = np.stack([r[cfg.filter.decide_by] for r in results])  # claimed identity x image
        own = np.stack([r.get(f"{cfg.filter.decide_by}_own_sim", np.full(len(images), np.nan)) for r in results])
        kept_pairs += [(kind, i, jobs[j].source_pid, scores[j, i], own[j, i])
                       for j, i in zip(*np.nonzero(scores >= threshold))]
        print(f"| {kind} | {scores.size} | {int((scores >= threshold).sum())} | {scores.max():.3f} |", flush=True)
    print(f"| (the build's generated images) | {len(gen)} | {int(gen['kept'].sum())} | {gen[column].max():.3f} |")
    for kind, i, source_pid, score, own_sim in kept_pairs:
        print(f"kept: {kind} #{i} claimed as source pid {source_pid} (score {score:.3f}, similarity to its own "
              f"identity {own_sim:.3f})")
    own_column = f"{column}_own_sim"
    if own_column not in gen:
        return
    sims = gen.loc[gen["kept"].astype(bool), own_column].to_numpy()
    print(f"the build's kept images, similarity to their own identity: min {sims.min():.3f}, 1st percentile "
          f"{np.percentile(sims, 1):.3f}, median {np.median(sims):.3f}")
    auto = similarity_floor(scorer.filters[jobs[0].source][cfg.filter.decide_by].gallery)
    print("\n| similarity floor (`filter.min_similarity`) | person-free pairs kept | the build's kept images kept |")
    print("|---|---:|---:|")
    own_setting = f"the build's own ({cfg.filter.min_similarity})"
    for label, floor in ((own_setting, -1.0), (f"auto ({auto:.3f})", auto), ("0.6", 0.6), ("0.7", 0.7)):
        free = sum(own_sim >= floor for *_, own_sim in kept_pairs)
        print(f"| {label} | {free} | {int((sims >= floor).sum())} of {len(sims)} |")


if __name__ == "__main__":
    main()
