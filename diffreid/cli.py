"""The ``diffreid`` command. Each subcommand lives in ``diffreid/commands/<name>.py`` with
``register(subparsers)``; heavy imports (torch, ray) happen inside the command, so ``--help`` is instant."""
from __future__ import annotations

import argparse
import importlib
import sys

from diffreid.errors import DiffreidError

# (module, one-line summary) in the order a newcomer meets them; a stage's summary comes from diffreid/stages.py
COMMANDS = [
    ("demo", "run the whole pipeline on the embedded toy world and print the results"),
    ("toyworld", "render a procedural toy pedestrian world in Market-1501 layout"),
    ("models", "make model folders (e.g. a tiny offline diffusers pipeline)"),
    ("check", "validate a config file of any stage (follows _BASE_ and included files) and print it resolved"),
    ("build", None),
    ("plan", "GPU time, storage and GPU memory of a build before it runs (measured GPU table or FLOP estimate)"),
    ("data", "inspect Re-ID datasets: verify a Diff-Person folder, print stats, measure identity fidelity"),
    ("train", None),
    ("pretrain", None),
    ("finetune_eval", None),
    ("run_all", None),
    ("reproduce", None),
    ("serve", "start the augmentation HTTP service on a local Ray"),
    ("augment", "client: upload crops of a person to the service and download synthetic images"),
    ("vi_expand", None),
    ("toy_models", None),
]


class CommandError(DiffreidError, RuntimeError):
    """A user-facing failure: printed as one clear line, exit code 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffreid",
        description="Diffusion-ReID: generate identity-consistent person images with diffusion models, "
        "filter them with a Re-ID model, and pre-train Re-ID backbones on the result.",
        epilog="Start with `diffreid demo --quick`. Every command takes --help.",
    )
    from diffreid import __version__

    parser.add_argument("--version", action="version", version=f"diffreid {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from diffreid.stages import STAGES

    for module, summary in COMMANDS:
        summary = summary or STAGES[module].summary
        try:
            mod = importlib.import_module(f"diffreid.commands.{module}")
        except ModuleNotFoundError as err:
            if err.name != f"diffreid.commands.{module}":
                raise
            continue  # tests/test_cli.py asserts every command is present
        p = sub.add_parser(module.replace("_", "-"), help=summary, description=summary)
        mod.register(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (DiffreidError, FileNotFoundError) as err:
        print(f"diffreid {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

