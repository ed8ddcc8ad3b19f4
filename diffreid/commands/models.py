"""``diffreid models tiny --out DIR``: write a tiny offline Stable-Diffusion pipeline folder."""
from __future__ import annotations

from diffreid.cli import CommandError


def register(p):
    sub = p.add_subparsers(dest="models_command", metavar="WHAT")
    tiny = sub.add_parser("tiny", help="a tiny random SD-1.x pipeline in diffusers layout (tests, demo)",
                          description="Build a tiny Stable-Diffusion-1.x pipeline from configs (random, "
                          "seeded weights) and save it in the standard diffusers folder layout. "
                          "An existing complete folder built with the same settings is reused.")
    tiny.add_argument("--out", required=True, help="folder to write (created)")
    tiny.add_argument("--seed", type=int, default=0, help="weight-init seed (default 0)")
    tiny.add_argument("--height", type=int, default=64, help="default image height, divisible by 2 (64)")
    tiny.add_argument("--width", type=int, default=32, help="default image width, divisible by 2 (32)")
    tiny.set_defaults(func=run_tiny)
    rnd = sub.add_parser("random", help="an SD-1.5-shaped pipeline with random weights (real compute cost)",
                         description="Build a pipeline with the real architecture of a known model and seeded random "
                         "weights, offline: the stand-in for speed and memory where no weights can be downloaded. "
                         "sd15: UNet 860 M, VAE 84 M, CLIP ViT-L/14 text encoder, CLIP's 49,408-token vocabulary "
                         "when open-clip-torch is installed. ~4 GB of safetensors.")
    rnd.add_argument("--arch", default="sd15", choices=["sd15"], help="the architecture (sd15)")
    rnd.add_argument("--out", required=True, help="folder to write (created)")
    rnd.add_argument("--seed", type=int, default=0, help="weight-init seed (default 0)")
    rnd.set_defaults(func=run_random)
    p.set_defaults(func=lambda args: run_help(p))


def run_help(parser) -> int:
    parser.print_help()
    return 0


def run_tiny(args) -> int:
    from diffreid.models.tiny import build_tiny_pipeline

    try:
        out = build_tiny_pipeline(args.out, seed=args.seed, sample_height=args.height, sample_width=args.width)
    except ValueError as err:
        raise CommandError(str(err)) from None
    print(out)
    return 0


def run_random(args) -> int:
    from diffreid.models.random import build_random_pipeline

    try:
        out = build_random_pipeline(args.out, arch=args.arch, seed=args.seed)
    except ValueError as err:
        raise CommandError(str(err)) from None
    print(out)
    return 0
