"""How much a toy base model uses its prompt: noise-prediction loss on new pool images with the true caption,
with the shirt colour swapped in the caption, and with the empty caption, at a few noise steps.

    python benchmarks/toy_base_text_use.py [--model diffreid:toy-base] [--ids 64] [--steps 200 500 800]

A model that reads its captions loses clearly more with a wrong colour than with the true one; one that does not
shows three equal columns. Prints a markdown table.
"""
from __future__ import annotations

import argparse

from diffreid.data.toyworld import COLOURS


def main() -> None:
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    from diffreid.models.assets import resolve_model_path
    from diffreid.toy.base import ToyPoolConfig, render_pool, to_tensor, training_caption

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="diffreid:toy-base")
    ap.add_argument("--ids", type=int, default=64, help="new pool people, 2 images each")
    ap.add_argument("--steps", type=int, nargs="+", default=[200, 500, 800])
    args = ap.parse_args()

    pipe = StableDiffusionPipeline.from_pretrained(resolve_model_path(args.model), safety_checker=None,
                                                   requires_safety_checker=False, local_files_only=True)
    images, owners, _ = render_pool(ToyPoolConfig(ids=args.ids, images_per_id=2, seed=999), progress=False)
    true = [training_caption(o, None) for o in owners]

    def swapped(caption: str, colour: str) -> str:
        other = next(c for c in COLOURS if c != colour)
        return caption.replace(f"wearing a {colour} ", f"wearing a {other} ").replace(
            f"wearing an {colour} ", f"wearing a {other} ")

    wrong = [swapped(c, o.upper_colour) for c, o in zip(true, owners)]
    changed = sum(a != b for a, b in zip(true, wrong))
    sched = DDPMScheduler.from_config(pipe.scheduler.config)

    def embed(texts):
        ids = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return pipe.text_encoder(ids).last_hidden_state

    print(f"{args.model}: {len(images)} images, shirt colour swapped in {changed} captions")
    print("| step t | true caption | shirt colour swapped | empty caption |\n|---|---|---|---|")
    with torch.no_grad():
        x0 = pipe.vae.encode(to_tensor(images)).latent_dist.mean * pipe.vae.config.scaling_factor
        conds = [embed(true), embed(wrong), embed([""] * len(true))]
        for t in args.steps:
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t))
            steps = torch.full((len(x0),), t)
            xt = sched.add_noise(x0, noise, steps)
            losses = [float(((pipe.unet(xt, steps, encoder_hidden_states=c).sample - noise) ** 2).mean())
                      for c in conds]
            print(f"| {t} | " + " | ".join(f"{v:.4f}" for v in losses) + " |")


if __name__ == "__main__":
    main()
