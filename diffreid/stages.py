"""The stage registry: each stage declared once — its config model, its Ray-free run, its Ray run, its input check.

The CLI subcommands (``diffreid build|pretrain|finetune-eval|vi-expand|run-all|reproduce``), the ``ray_jobs``
entrypoints and ``diffreid check`` are generated from :data:`STAGES`; nothing here imports Ray (the Ray runs are
named by module path and imported only when used).

    from diffreid.stages import run_stage
    run_stage("pretrain", "configs/toy-pretrain.yaml", "outputs/pretrain", data="outputs/diff-person")
"""
from __future__ import annotations

import argparse
import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from diffreid.config import RESOLVED_CONFIG, ConfigError, StageConfig
from diffreid.errors import DiffreidError
from diffreid.models.assets import TINY_MODEL


@dataclass(frozen=True)
class Input:
    """A path the stage reads besides its config (``--data DIR``)."""

    name: str
    help: str


@dataclass(frozen=True)
class Option:
    """A command-line option of one stage, passed to its run function as ``dest``."""

    flag: str
    kwargs: dict
    ray_only: bool = False

    @property
    def dest(self) -> str:
        return self.kwargs.get("dest", self.flag.lstrip("-").replace("-", "_"))


@dataclass(frozen=True)
class Stage:
    name: str  # CLI command (with - for _) and registry key
    summary: str
    config: str  # "module:Class" of its StageConfig
    run: str | None  # "module:function" (cfg, out, **inputs) -> result, in this process
    run_ray: str | None  # the same on the connected Ray cluster
    describe: Callable[[Any, Path], str]  # what the command prints at the end
    check: Callable[[Any], list[str]] = lambda cfg: []  # missing files etc., listed before any work
    fits: Callable[[Any], list[str]] = lambda cfg: []  # resources the config declares, checked with or without files
    inputs: tuple[Input, ...] = ()
    outputs: str = ""
    job: str | None = None  # ray_jobs.<job> module name
    options: tuple[Option, ...] = field(default=())

    def config_model(self) -> type[StageConfig]:
        return _resolve(self.config)

    def load(self, path: str | Path | None, overrides: list[str] = (), files: bool = True) -> StageConfig:
        """Load and validate the config, then (``files``) list every missing input file at once (ConfigError)."""
        cfg = self.config_model().load(path, overrides=list(overrides))
        problems = (self.check(cfg) if files else []) + self.fits(cfg)
        if problems:
            raise ConfigError(f"{self.name} config ({path or '<defaults>'}):" + "".join(f"\n  - {p}" for p in problems))
        return cfg


def _resolve(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


# ----------------------------------------------------------------------------------------------------------
# input checks: files a config names must exist before an hour of work starts
# ----------------------------------------------------------------------------------------------------------
def _missing_dataset(where: str, ref) -> list[str]:
    root = getattr(ref, "root", None)
    return [f"{where}.root: folder {root} does not exist"] if root and not Path(root).is_dir() else []


def _missing_model(where: str, path: str | None) -> list[str]:
    from diffreid.models.assets import resolve_model_path

    if not path or path == TINY_MODEL:  # built into OUT by the run itself
        return []
    resolved = Path(resolve_model_path(path))
    looks_local = path.startswith((".", "/", "~", "diffreid:")) or resolved.suffix or Path(path).exists()
    return [f"{where}: model folder {resolved} does not exist"] if looks_local and not resolved.exists() else []


def _check_build(cfg) -> list[str]:
    problems = []
    for i, src in enumerate(cfg.sources):
        if src.toyworld is None:
            problems += _missing_dataset(f"sources[{i}]", src)
    return problems + _missing_model("base_model.path", cfg.base_model.path)


def _build_memory(cfg) -> list[str]:
    """A build that cannot fit the GPU that ``runtime.gpu_memory_gb`` declares (``diffreid.memory``)."""
    if not cfg.runtime.gpu_memory_gb:
        return []
    from diffreid.memory import ensure_fits

    try:
        ensure_fits(cfg, cfg.base_model.path)
    except ConfigError as err:
        return [f"runtime.gpu_memory_gb: {err}"]
    return []


def _check_finetune(cfg) -> list[str]:
    return cfg.missing_files()


def _check_run_all(cfg) -> list[str]:
    return [f"build.{p}" for p in _check_build(cfg.build)] + [f"finetune_eval.{p}" for p in _check_finetune(
        cfg.finetune_eval)]


def _check_study(cfg) -> list[str]:
    return [f"build.{p}" for p in _missing_model("base_model.path", cfg.build.base_model.path)]


def _check_vi(cfg) -> list[str]:
    """Empty roots are the toy fallback (with vi_toyworld / rgb_toyworld, else expand_vi says what is missing)."""
    problems = [f"{name}: folder {getattr(cfg, name)} does not exist" for name in ("vi_root", "rgb_root")
                if getattr(cfg, name) and not Path(getattr(cfg, name)).is_dir()]
    return problems + _missing_model("pipeline.path", cfg.pipeline.path)


# ----------------------------------------------------------------------------------------------------------
# what each command prints at the end
# ----------------------------------------------------------------------------------------------------------
def format_table(rows: dict[str, dict[str, float]]) -> str:
    cols = ["mAP", "Rank-1", "Rank-5", "mINP"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, metrics in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * metrics[c]:.1f}" for c in cols) + " |")
    return "\n".join(lines)


def _describe_build(report, out: Path) -> str:
    return f"diff-person: {Path(report).parent}\nreport:      {report}"


def _describe_pretrain(_, out: Path) -> str:
    return f"backbone: {out / 'backbone.safetensors'}\nrecipe:   {out / 'recipe.json'}"


def _describe_finetune(_, out: Path) -> str:
    return f"results: {out / 'results.md'}\n\n" + (out / "results.md").read_text()


def _describe_study(_, out: Path) -> str:
    return f"results: {out / 'RESULTS.md'}"


def _describe_vi(result, out: Path) -> str:
    s = result if isinstance(result, dict) else result.summary
    lines = [f"VI expansion in {out}: {s['expanded_ids']}/{s['rgb_ids']} RGB identities expanded "
             f"(new pids {s['new_pids'][0]}..{s['new_pids'][1]}), {s['generated_kept']}/{s['generated']} generated "
             f"images kept, {s['images_written']} images written"]
    if s["generated"] and not s["generated_kept"]:
        lines.append("note: no generated image passed the filter; scores are in manifest.parquet, the images "
                     "under dropped/")
    lines.append(f"modality adapter: {s['adapter']['steps']} steps in {s['adapter']['seconds']}s "
                 f"(loss {s['adapter']['loss_first']:.4f} -> {s['adapter']['loss_last']:.4f})")
    for mode, m in s["scorer"].items():
        if isinstance(m, dict):
            lines.append(f"scorer {mode}: Rank-1 {m['Rank-1']:.3f}  mAP {m['mAP']:.3f}  mINP {m['mINP']:.3f}")
    if s["generated"]:
        lines.append(f"kept {s['generated_kept'] / s['generated']:.0%} of the generated images")
    if "fidelity" in s:
        f = s["fidelity"]
        lines.append(f"fidelity (independent reader, Rank-1 of generated IR vs the identities' visible images, "
                     f"chance {f['chance']:.2f}): all {f['rank1_all']:.2f}, kept {f['rank1_kept']:.2f}, "
                     f"dropped {f['rank1_dropped']:.2f}")
    return "\n".join(lines)


DATA = Input("data", "Diff-Person or any Market-layout folder (its train split is used)")
REID_DATA = Input("data", "dataset folder in Market-1501 layout (bounding_box_train, query, bounding_box_test)")

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("train", "train a BoT-style Re-ID model on a dataset and evaluate it",
          "diffreid.reid.train:ReIDTrainConfig", "diffreid.reid.train:train_stage", None,
          lambda rows, out: format_table(rows) + f"\nmodel saved in {out}", inputs=(REID_DATA,),
          outputs="model.safetensors, reid_model.json, history.json, metrics.json",
          options=(Option("--baseline", {"action": "store_true", "help": "also evaluate the untrained "
                                         "(random-init or pre-trained-file) model for comparison"}),)),
    Stage("build", "build a Diff-Person dataset: prompts -> adapters -> samples -> filter -> write",
          "diffreid.distributed.build:RayBuildJobConfig", "diffreid.build:build_diff_person",
          "diffreid.distributed.build:build_diff_person_ray", _describe_build, _check_build, _build_memory,
          outputs="Market-layout dataset + dropped/, manifest.parquet, fidelity.json, report.html",
          job="build_diff_person"),
    Stage("pretrain", "pre-train a backbone on a Diff-Person (or Market-layout) dataset",
          "diffreid.reid.pretrain:PretrainConfig", "diffreid.reid.pretrain:pretrain_stage",
          "diffreid.distributed.train:pretrain_stage_ray", _describe_pretrain, inputs=(DATA,),
          outputs="backbone.safetensors (timm), recipe.json", job="pretrain_backbone"),
    Stage("finetune_eval", "fine-tune and evaluate in the paper's settings (supervised, Fs, Ss, cross-domain, "
          "unsupervised, UDA, DG)",
          "diffreid.reid.finetune:FinetuneEvalConfig", "diffreid.reid.finetune:run_finetune_eval",
          "diffreid.distributed.finetune:run_finetune_eval_ray", _describe_finetune, _check_finetune,
          outputs="results.csv/.md/.png, results_runs.csv", job="finetune_eval",
          options=(Option("--gpus-per-run", {"type": float, "default": 0, "dest": "num_gpus",
                                             "help": "GPUs per fine-tune task (0 on CPU clusters)"}, ray_only=True),)),
    Stage("vi_expand", "DiVE: expand an RGB dataset with identity-preserving infrared images",
          "diffreid.vi.config:VIExpandConfig", "diffreid.vi.expand:expand_vi", "diffreid.distributed.vi:expand_vi_ray",
          _describe_vi, _check_vi,
          outputs="the VI dataset's layout (SYSU-MM01, RegDB or LLCM), manifest.parquet, summary.json",
          job="expand_vi"),
    Stage("run_all", "the main job: build Diff-Person, pre-train on it, fine-tune + evaluate, one HTML report",
          "diffreid.distributed.run_all:RunAllConfig", None, "diffreid.distributed.run_all:run_all",
          lambda page, out: f"report: {page}", _check_run_all, lambda cfg: [f"build.{p}" for p in _build_memory(cfg.build)],
          outputs="diff-person/, pretrain/, finetune/, report.html", job="run_all"),
    Stage("toy_models", "re-train the shipped toy models (captioner and text-to-image base; seeded, CPU, resumable)",
          "diffreid.toy.models:ToyModelsConfig", "diffreid.toy.models:train_toy_models", None,
          lambda results, out: f"toy models in {out}: {', '.join(results)}",
          outputs="toy-captioner/, toy-base/ (the package's assets folder is diffreid/assets)",
          options=(Option("--work", {"default": "outputs/toy-models-work",
                                     "help": "checkpoints, loss log, sample grids (resumes from them)",
                                     "dest": "work_dir"}),
                   Option("--part", {"choices": ["captioner", "base", "all"], "default": "all",
                                     "help": "which model to train"}))),
    Stage("reproduce", "the miniature reproduction of the paper's Tables 2-6 on the toy world",
          "diffreid.study:StudyConfig", "diffreid.study:run_study", "diffreid.distributed.finetune:run_study_ray",
          _describe_study, _check_study, outputs="RESULTS.md, builds/, pretrain/, finetune/", job="reproduce"),
)}


def find_stage(name: str) -> Stage:
    key = name.replace("-", "_")
    if key not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    return STAGES[key]


def run_stage(name: str, config: str | Path | StageConfig | None, out: str | Path, overrides: list[str] = (),
              use_ray: bool = False, address: str | None = None, progress: bool = True, **inputs) -> tuple[Any, str]:
    """Validate, check inputs, write OUT/config.yaml, run in this process (or on Ray); returns (result, text).
    ``inputs``: the stage's input paths and options (``data=DIR``, ``baseline=True``)."""
    stage = find_stage(name)
    cfg = config if isinstance(config, StageConfig) else stage.load(config, overrides)
    missing = [i.name for i in stage.inputs if not inputs.get(i.name)]
    if missing:
        raise ConfigError(f"{stage.name}: missing input(s) {missing}")
    for i in stage.inputs:
        if not Path(inputs[i.name]).exists():
            raise ConfigError(f"{stage.name}: --{i.name} {inputs[i.name]} does not exist")
    target = stage.run_ray if use_ray or stage.run is None else stage.run
    if target is None:
        raise ConfigError(f"{stage.name} runs on Ray only")
    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(out_dir / RESOLVED_CONFIG)
    if target == stage.run_ray:
        from diffreid.distributed.cluster import init_ray

        init_ray(address)
    fn = _resolve(target)
    if "progress" in inspect.signature(fn).parameters:
        inputs["progress"] = progress
    result = fn(cfg, out_dir, **inputs)
    return result, stage.describe(result, out_dir)


# ----------------------------------------------------------------------------------------------------------
# generated entry points
# ----------------------------------------------------------------------------------------------------------
def add_stage_arguments(p: argparse.ArgumentParser, stage: Stage, job: bool) -> None:
    config_help = f"{stage.config.split(':')[1]} YAML (`diffreid check FILE` validates it; default: its defaults)"
    p.add_argument("--config", help=config_help)
    p.add_argument("--out", required=True, help=f"output folder: {stage.outputs} (re-running resumes)")
    for i in stage.inputs:
        p.add_argument(f"--{i.name}", required=True, help=i.help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set a.b=3 (YAML values)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if stage.run is not None and stage.run_ray is not None and not job:
        p.add_argument("--ray", action="store_true", help="run on a Ray cluster (default: in this process)")
    if stage.run_ray is not None:
        p.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else a local cluster on 127.0.0.1)")
    for option in stage.options:
        if not option.ray_only or stage.run_ray is not None:
            p.add_argument(option.flag, **option.kwargs)


def stage_command(stage: Stage) -> Callable[[argparse.ArgumentParser], None]:
    """``register(parser)`` of the CLI subcommand of ``stage``."""
    def register(p):
        add_stage_arguments(p, stage, job=False)
        p.set_defaults(func=lambda args: _run_from_args(stage, args, use_ray=getattr(args, "ray", False)
                                                        or stage.run is None))
    return register


def _run_from_args(stage: Stage, args, use_ray: bool) -> int:
    inputs = {i.name: getattr(args, i.name) for i in stage.inputs}
    inputs.update({o.dest: getattr(args, o.dest) for o in stage.options if use_ray or not o.ray_only})
    _, text = run_stage(stage.name, args.config, args.out, args.overrides, use_ray=use_ray,
                        address=getattr(args, "address", None), progress=not args.quiet, **inputs)
    print(text)
    return 0


def job_main(name: str, argv: list[str] | None = None) -> int:
    """``python -m ray_jobs.<job>``: the stage on the connected Ray cluster; user errors end it with one line."""
    import sys

    stage = find_stage(name)
    p = argparse.ArgumentParser(prog=f"python -m ray_jobs.{stage.job}", description=stage.summary + " (Ray job)")
    add_stage_arguments(p, stage, job=True)
    args = p.parse_args(argv)
    try:
        return _run_from_args(stage, args, use_ray=True)
    except (DiffreidError, FileNotFoundError) as err:
        print(f"ray_jobs.{stage.job}: error: {err}", file=sys.stderr)
        return 2


# ----------------------------------------------------------------------------------------------------------
# diffreid check
# ----------------------------------------------------------------------------------------------------------
def recognise(path: str | Path) -> Stage:
    """The stage whose config model knows every top-level key of the file (the most specific if several)."""
    from diffreid.config import read_yaml

    keys = set(read_yaml(path))
    fits = []
    for stage in STAGES.values():
        fields = set(stage.config_model().model_fields)
        unknown = keys - fields
        fits.append((len(unknown), len(fields), stage))
    fits.sort(key=lambda t: (t[0], t[1]))
    best = fits[0]
    if best[0] and len(keys) > 0:
        raise ConfigError(f"{path}: no stage config has all of its keys ({sorted(keys)}); pass --stage "
                          f"({', '.join(STAGES)})")
    return best[2]


def check_config(path: str | Path, stage: str | None = None, overrides: list[str] = (),
                 files: bool = True) -> tuple[Stage, StageConfig]:
    """Validate a config file (following `_BASE_` and included files) and (``files``) its input files; raises
    ConfigError listing every problem, each with its dotted field path."""
    found = find_stage(stage) if stage else recognise(path)
    return found, found.load(path, overrides, files)
