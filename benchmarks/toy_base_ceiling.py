"""What bounds the toy base's trouser colour: the captioner on real crops, the VAE's round trip, and guidance.

    python benchmarks/toy_base_ceiling.py [--model diffreid:toy-base] [--ids 300] [--guidance 7 10 14]

Three readings by the shipped toy captioner: (1) shirt / trouser colour on new real pool crops, (2) on the same
crops after the base's VAE encode + decode, (3) prompt following of the base at each guidance (the demo's 20 DDIM
steps, 72 samples). (1) and (2) are ceilings for (3). Prints markdown tables.
"""
from __future__ import annotations

import argparse
from collections import Counter


def main() -> None:
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    from diffreid.generation.toy_captioner import ToyCaptioner
    from diffreid.models.assets import resolve_model_path
    from diffreid.toy.base import (SAMPLE_PROMPTS, PromptFollowingConfig, ToyPoolConfig, measure_prompt_following,
                                   render_pool, to_tensor)

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="diffreid:toy-base")
    ap.add_argument("--captioner", default="diffreid:toy-captioner")
    ap.add_argument("--ids", type=int, default=300, help="new pool people, 2 crops each")
    ap.add_argument("--guidance", type=float, nargs="*", default=[7.0, 10.0, 14.0])
    args = ap.parse_args()
    torch.manual_seed(0)

    pipe = StableDiffusionPipeline.from_pretrained(resolve_model_path(args.model), safety_checker=None,
                                                   requires_safety_checker=False, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    captioner = ToyCaptioner(resolve_model_path(args.captioner))
    images, owners, _ = render_pool(ToyPoolConfig(ids=args.ids, images_per_id=2, seed=4242), progress=False)
    with torch.no_grad():
        latents = pipe.vae.encode(to_tensor(images)).latent_dist.mean
        decoded = pipe.vae.decode(latents).sample.clamp(-1, 1)
    round_trip = [Image.fromarray(a) for a in
                  ((decoded.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)]
    real = [Image.fromarray(a) for a in images]

    prompted_lower = {lower for _, lower in SAMPLE_PROMPTS}
    print(f"{args.model}: {len(real)} new pool crops ({args.ids} people)\n")
    print("| crops | shirt colour | trouser colour | trouser colour, the 6 prompted trouser colours only |")
    print("|---|---|---|---|")
    per_colour = {}
    for name, ims in (("real", real), ("VAE round trip", round_trip)):
        preds = captioner.predict(ims)
        upper = np.mean([p["upper_colour"] == o.upper_colour for p, o in zip(preds, owners)])
        lower_ok = [p["lower_colour"] == o.lower_colour for p, o in zip(preds, owners)]
        subset = [ok for ok, o in zip(lower_ok, owners) if o.lower_colour in prompted_lower]
        print(f"| {name} | {upper:.1%} | {np.mean(lower_ok):.1%} | {np.mean(subset):.1%} ({len(subset)}) |")
        hits, totals = Counter(), Counter()
        for ok, o in zip(lower_ok, owners):
            hits[o.lower_colour] += ok
            totals[o.lower_colour] += 1
        per_colour[name] = {c: (hits[c], totals[c]) for c in totals}

    print("\n| true trouser colour | real | VAE round trip |\n|---|---|---|")
    for colour in sorted(per_colour["real"], key=lambda c: -per_colour["real"][c][1]):
        cells = [f"{h}/{n}" for h, n in (per_colour[k].get(colour, (0, 0)) for k in ("real", "VAE round trip"))]
        print(f"| {colour}{' (prompted)' if colour in prompted_lower else ''} | " + " | ".join(cells) + " |")

    if args.guidance:
        print("\n| guidance | shirt colour | trouser colour | samples |\n|---|---|---|---|")
    for g in args.guidance:
        r = measure_prompt_following(pipe, captioner, PromptFollowingConfig(guidance=g))
        print(f"| {g:g} | {r['upper_colour']:.1%} | {r['lower_colour']:.1%} | {r['images']} |", flush=True)


if __name__ == "__main__":
    main()
