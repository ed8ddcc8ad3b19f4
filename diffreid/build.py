"""`build_diff_person`: source identities -> LPE prompts -> reference set -> adapter -> samples -> filter -> write.

The stage is split into three roles over plain data so the Ray layer can place each on its own actor pool
without re-implementing any of it:

    plan = prepare_build(cfg, out)            # sources, identities, base model, filter model, shared refsets
    gen = IdentityGenerator(cfg, plan)        # holds the base pipeline; per identity: adapter + samples
    scorer = IdentityScorer(cfg, plan)        # holds the Re-ID model + FAISS galleries
    with open_writer(cfg, plan) as writer:    # Market layout + manifest, atomic, resumable per identity
        for job in pending_jobs(plan, writer):
            gen.train_adapter(job)            # trained (or found finished), then sampled
            batch = gen.generate(job)
            write_identity(writer, job, batch, scorer.score(job, batch.images))
    measure_build_fidelity(cfg, plan)         # identity fidelity of the generated images -> OUT/fidelity.json
    finish_build(cfg, plan)                   # manifest merge, report
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from diffreid.config import (RESOLVED_CONFIG, ConfigError, RuntimeConfig, StageConfig, apply_overrides, fill_runtime,
                             read_yaml, resolved_config)
from diffreid.data.sources import SourceConfig, load_source, selected_identities
from diffreid.diffperson.fidelity import FidelityConfig
from diffreid.diffperson.writer import DiffPersonWriter, WriterConfig
from diffreid.filtering.base import FilterConfig
from diffreid.generation.adapters.config import AdapterConfig
from diffreid.generation.prompts import LPEConfig
from diffreid.generation.refset import RefSetConfig
from diffreid.generation.sampler import SamplerConfig
from diffreid.io import atomic_write_json
from diffreid.models.pipeline import PipelineConfig
from diffreid.reid.train import ReIDTrainConfig, ensure_reid_model


class BuildConfig(StageConfig):
    sources: list[SourceConfig] = Field(..., min_length=1, description="several sources share one disjoint pid space")
    base_model: PipelineConfig = Field(default_factory=PipelineConfig, description="SD-1.x folder or hub id; "
                                       "diffreid:toy-base (shipped) or diffreid:tiny (random, built into OUT/models)")
    lpe: LPEConfig = Field(default_factory=LPEConfig, description="captioner, identity token, prompt templates")
    refset: RefSetConfig = Field(default_factory=RefSetConfig, description="attribute reference set (DI)")
    adapter: AdapterConfig = Field(default_factory=AdapterConfig, description="identity adapter mode and training")
    sampler: SamplerConfig = Field(default_factory=SamplerConfig, description="images per identity and diversity")
    filter: FilterConfig = Field(default_factory=FilterConfig, description="Re-ID CTF by default (paper §3.2)")
    filter_reid: ReIDTrainConfig = Field(default_factory=ReIDTrainConfig,
                                         description="trains the filter's Re-ID model per source when "
                                                     "filter.reid_model_dir is unset")
    writer: WriterConfig = Field(default_factory=WriterConfig, description="image format, generated camera id")
    fidelity: FidelityConfig = Field(default_factory=FidelityConfig,
                                     description="identity fidelity measured at the end of the build "
                                                 "(OUT/fidelity.json, first table of the report)")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig,
                                   description="every part without its own runtime gets this one: one line moves the build to cuda")

    @model_validator(mode="before")
    @classmethod
    def _read_tiny_base_model_flag(cls, data):
        """Builds written before the one toy-fallback rule record ``tiny_base_model``; read it as that rule."""
        if isinstance(data, dict) and "tiny_base_model" in data:
            data = dict(data)
            if data.pop("tiny_base_model"):
                data["base_model"] = {**(data.get("base_model") or {}), "path": "diffreid:tiny"}
        return data

    @model_validator(mode="after")
    def _one_runtime(self):
        fill_runtime(self.runtime, (self.base_model, self.lpe, self.adapter, self.filter_reid, self.fidelity.reader))
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"sources: names must be unique, got {names}")
        if not self.base_model.path:
            raise ValueError("base_model.path is empty: give an SD-1.x folder or hub id (diffreid:toy-base and "
                             "diffreid:tiny name the toy models)")
        return self


class BuildTemplate(BuildConfig):
    """A BuildConfig inside a composed job (the study), which sets the sources itself."""

    sources: list[SourceConfig] = Field(default_factory=list, description="empty: the composing job sets them")
    base_model: PipelineConfig = Field(default_factory=lambda: PipelineConfig(path="diffreid:toy-base"),
                                       description="the shipped toy base: the study runs in the toy world")

    def complete(self, overrides: list[str] = (), where: str = "build", **fields) -> BuildConfig:
        """The stage config: ``overrides`` (dotted KEY=VALUE) applied, then the job's fields (sources) set."""
        data = apply_overrides(self.model_dump(mode="json"), list(overrides), where)
        return BuildConfig.validated({**data, **fields}, where)


@dataclass
class IdentityJob:
    """One identity to generate: plain data, cheap to ship to an actor."""

    source: str
    source_pid: int
    pid: int  # output pid in the disjoint Diff-Person id space
    image_paths: list[str]
    sequence_paths: list[str]  # the same-camera sequence LPE captions


@dataclass
class BuildPlan:
    out: str
    base_model_path: str
    jobs: list[IdentityJob]
    skipped: list[dict]
    source_records: dict[str, list]  # source name -> train records (filter gallery)
    filter_model_dirs: dict[str, str]
    captions: dict[int, str] = field(default_factory=dict)  # pid -> merged caption
    refsets: dict[str, list[str]] = field(default_factory=dict)  # source (shared) or str(pid) -> image paths
    refset_prompts: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class GeneratedBatch:
    images: list  # PIL images
    records: list[dict]
    adapter_dir: str
    prompt: str
    seconds: float


# ----------------------------------------------------------------------------------------------------------
# 1. plan
# ----------------------------------------------------------------------------------------------------------
def base_model_path(cfg: BuildConfig, out_dir: str | Path) -> str:
    """``base_model.path`` by the one toy-fallback rule (``diffreid.models.assets.resolve_base_model``)."""
    from diffreid.models.assets import resolve_base_model

    return resolve_base_model(cfg.base_model.path, out_dir, cfg.runtime.seed, cfg.sampler.height, cfg.sampler.width)


def prepare_build(cfg: BuildConfig, out_dir: str | Path, progress: bool = True) -> BuildPlan:
    """Resolve sources, identities, base model and filter models; caption identities; shared reference sets.
    Every step is cached under OUT, so a re-run is cheap."""
    from diffreid.generation.prompts import caption_images

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(out / RESOLVED_CONFIG)

    base_path = base_model_path(cfg, out)

    jobs, skipped, source_records, filter_dirs = [], [], {}, {}
    keys = []
    for src in cfg.sources:
        root, dataset = load_source(src, out)
        source_records[src.name] = dataset.train
        sequences = dataset.identity_sequences("train")
        chosen, source_skipped = selected_identities(src, dataset, root)
        skipped += source_skipped
        for spid, paths in chosen.items():
            seq = [r.path for r in caption_images(sequences[spid], cfg.lpe)]
            keys.append((src.name, spid))
            jobs.append(IdentityJob(src.name, spid, -1, paths, seq))
        filter_dirs[src.name] = cfg.filter.reid_model_dir or str(
            ensure_filter_model(cfg, dataset.train, out / "filters" / src.name / "reid_model", progress))

    with DiffPersonWriter(out, cfg.writer) as writer:
        for job, pid in zip(jobs, writer.register_identities(keys)):
            job.pid = pid
    plan = BuildPlan(out=str(out), base_model_path=base_path, jobs=jobs, skipped=skipped,
                     source_records=source_records, filter_model_dirs=filter_dirs)
    plan.captions = caption_all(cfg, plan)
    if cfg.refset.share_across_identities and cfg.adapter.prior_loss_weight > 0:
        pipe = load_base_pipeline(cfg, plan)
        for src in cfg.sources:
            prompts = [reference_prompt(cfg, plan.captions[j.pid]) for j in jobs if j.source == src.name]
            if prompts:
                plan.refsets[src.name], plan.refset_prompts[src.name] = make_refset(
                    cfg, pipe, prompts, out / "refsets" / src.name)
    return plan


def load_build_config(root: str | Path) -> BuildConfig:
    """A finished build's own config (ROOT/config.yaml), without the ``ray:`` section a Ray build records beside it."""
    path = resolved_config(root)
    if path is None:
        raise ConfigError(f"{root}: no {RESOLVED_CONFIG} (not a Diff-Person build folder)")
    data = read_yaml(path)
    data.pop("ray", None)
    return BuildConfig.validated(data, str(path))


def ensure_filter_model(cfg: BuildConfig, train_records, folder: Path, progress: bool) -> Path:
    """The source's Re-ID model for Re-ID CTF, trained once with the project's BoT trainer."""
    return ensure_reid_model(cfg.filter_reid, train_records, folder, progress)


def caption_all(cfg: BuildConfig, plan: BuildPlan) -> dict[int, str]:
    from diffreid.generation.prompts import build_captioner, caption_identity

    captioner = build_captioner(cfg.lpe)
    cache = Path(plan.out) / "captions"
    return {job.pid: caption_identity(captioner, job.sequence_paths, cache, job.pid, max_phrases=cfg.lpe.max_phrases)
            for job in plan.jobs}


def identity_prompt(cfg: BuildConfig, caption: str, pid: int) -> str:
    from diffreid.generation.prompts import prompts_from_config

    token = cfg.adapter.token(pid) if cfg.adapter.mode == "shared_lora_ti" else None
    return prompts_from_config(caption, cfg.lpe, token=token).identity


def reference_prompt(cfg: BuildConfig, caption: str) -> str:
    from diffreid.generation.prompts import prompts_from_config

    return prompts_from_config(caption, cfg.lpe).reference


def make_refset(cfg: BuildConfig, pipe, prompts: list[str], folder: Path) -> tuple[list[str], list[str]]:
    from diffreid.generation.refset import generate_reference_set, plan as refset_plan

    prompts = list(dict.fromkeys(prompts))
    paths = generate_reference_set(pipe, prompts, cfg.refset, folder)
    planned = refset_plan([" ".join(p.split()) for p in prompts], cfg.refset)
    return [str(p) for p in paths], [p["prompt"] for p in planned]


def load_base_pipeline(cfg: BuildConfig, plan: BuildPlan):
    from diffreid.models.pipeline import load_pipeline

    return load_pipeline(cfg.base_model.model_copy(update={"path": plan.base_model_path}))


# ----------------------------------------------------------------------------------------------------------
# 2. generate (one base pipeline, resident; adapters trained and sampled on it)
# ----------------------------------------------------------------------------------------------------------
class IdentityGenerator:
    def __init__(self, cfg: BuildConfig, plan: BuildPlan, pipe=None):
        from diffreid.memory import ensure_fits

        self.cfg, self.plan = cfg, plan
        self.pipe = pipe if pipe is not None else load_base_pipeline(cfg, plan)
        ensure_fits(cfg, plan.base_model_path, self.pipe.device)

    def adapter_dir(self, job: IdentityJob) -> Path:
        name = "shared" if self.cfg.adapter.mode == "shared_lora_ti" else str(job.pid)
        return Path(self.plan.out) / "adapters" / name

    def reference(self, job: IdentityJob) -> tuple[list[str] | None, list[str] | None]:
        if self.cfg.adapter.prior_loss_weight == 0:
            return None, None
        if self.cfg.refset.share_across_identities:
            return self.plan.refsets[job.source], self.plan.refset_prompts[job.source]
        prompt = reference_prompt(self.cfg, self.plan.captions[job.pid])
        return make_refset(self.cfg, self.pipe, [prompt], Path(self.plan.out) / "refsets" / str(job.pid))

    def train_adapter(self, job: IdentityJob) -> Path:
        """Train (or find finished) the identity's adapter; returns its folder."""
        from diffreid.generation.adapters import train_identity_adapter

        if self.cfg.adapter.mode == "shared_lora_ti":
            return self.train_shared()
        folder = self.adapter_dir(job)
        ref_images, ref_prompts = self.reference(job)
        train_identity_adapter(self.pipe, job.image_paths, identity_prompt(self.cfg, self.plan.captions[job.pid], job.pid),
                               ref_images, ref_prompts, self.cfg.adapter, folder, adapter_name=f"id{job.pid}")
        return folder

    def train_shared(self) -> Path:
        """shared_lora_ti: one adapter for every identity of the plan, trained once (a finished run is reused)."""
        from diffreid.generation.adapters import train_shared_lora_ti

        first = self.plan.jobs[0]
        ref_images, ref_prompts = self.reference(first)
        identities = {j.pid: (j.image_paths, self.plan.captions[j.pid]) for j in self.plan.jobs}
        folder = self.adapter_dir(first)
        train_shared_lora_ti(self.pipe, identities, self.cfg.adapter, folder, ref_images=ref_images,
                             ref_prompt=ref_prompts, template=self.cfg.lpe.identity_template)
        return folder

    def ensure_loaded(self, job: IdentityJob, folder: Path) -> str:
        from diffreid.generation.adapters import load_identity_adapter

        name = "shared" if self.cfg.adapter.mode == "shared_lora_ti" else f"id{job.pid}"
        load_identity_adapter(self.pipe, folder, name)
        return name

    def trained_dir(self, job: IdentityJob) -> Path:
        """The identity's finished adapter folder; never trains (``train_adapter`` does, before sampling)."""
        from diffreid.generation.adapters.store import ADAPTER_JSON, AdapterError

        folder = self.adapter_dir(job)
        if not (folder / ADAPTER_JSON).is_file():
            raise AdapterError(f"{folder} holds no finished adapter for pid {job.pid}: call train_adapter first")
        return folder

    def release(self, name: str) -> None:
        from diffreid.generation.adapters import delete_adapter

        if name != "shared":
            delete_adapter(self.pipe, name)

    def generate(self, job: IdentityJob, keep_loaded: bool = False) -> GeneratedBatch:
        """Sample the identity from the adapter ``train_adapter`` trained."""
        from diffreid.generation.sampler import sample_identity

        t0 = time.time()
        folder = self.trained_dir(job)
        name = self.ensure_loaded(job, folder)
        prompt = identity_prompt(self.cfg, self.plan.captions[job.pid], job.pid)
        generated = sample_identity(self.pipe, name, prompt, job.pid, self.cfg.sampler, init_images=job.image_paths)
        if not keep_loaded:
            self.release(name)
        rel = str(folder.relative_to(self.plan.out))
        records = [{**g.record, "adapter": rel, "base_model": self.plan.base_model_path} for g in generated]
        return GeneratedBatch([g.image for g in generated], records, rel, prompt, time.time() - t0)


    def generate_many(self, jobs: list[IdentityJob], adapter_name: str | None = None) -> list[GeneratedBatch]:
        """shared_lora_ti: one sampling run over several identities whose batches mix them (adapter trained
        beforehand by ``train_shared``, or already loaded as ``adapter_name``)."""
        from diffreid.generation.sampler import sample_mixed

        t0 = time.time()
        name = adapter_name or self.ensure_loaded(jobs[0], self.trained_dir(jobs[0]))
        prompts = {j.pid: identity_prompt(self.cfg, self.plan.captions[j.pid], j.pid) for j in jobs}
        generated = sample_mixed(self.pipe, list(prompts.items()), self.cfg.sampler, adapter=name,
                                 init_images={j.pid: j.image_paths for j in jobs})
        rel = str(self.adapter_dir(jobs[0]).relative_to(self.plan.out))
        seconds = (time.time() - t0) / len(jobs)
        batches = []
        for job in jobs:
            mine = [g for g in generated if g.record["pid"] == job.pid]
            records = [{**g.record, "adapter": rel, "base_model": self.plan.base_model_path} for g in mine]
            batches.append(GeneratedBatch([g.image for g in mine], records, rel, prompts[job.pid], seconds))
        return batches


# ----------------------------------------------------------------------------------------------------------
# 3. score (Re-ID model + FAISS gallery per source, built once)
# ----------------------------------------------------------------------------------------------------------
class IdentityScorer:
    def __init__(self, cfg: BuildConfig, plan: BuildPlan):
        from diffreid.filtering import build_filters

        self.cfg = cfg
        self.filters = {}
        for name, records in plan.source_records.items():
            fcfg = cfg.filter.model_copy(update={"reid_model_dir": plan.filter_model_dirs[name]})
            self.filters[name] = build_filters(fcfg, records, runtime=cfg.runtime,
                                               cache_dir=Path(plan.out) / "filters" / name)

    def score(self, source: str, source_pid: int, images: list) -> tuple[dict[str, Any], Any]:
        """Scores of every enabled filter (claimed identity = the source pid) and the keep flags."""
        from diffreid.filtering import decide, score_all

        scores = score_all(self.filters[source], images, [source_pid] * len(images))
        return scores, decide(scores, self.cfg.filter)


# ----------------------------------------------------------------------------------------------------------
# 4. write and finish
# ----------------------------------------------------------------------------------------------------------
def open_writer(cfg: BuildConfig, plan: BuildPlan) -> DiffPersonWriter:
    return DiffPersonWriter(plan.out, cfg.writer)


def pending_jobs(plan: BuildPlan, writer: DiffPersonWriter) -> list[IdentityJob]:
    return [j for j in plan.jobs if not writer.has_identity((j.source, j.source_pid))]


def write_identity(writer: DiffPersonWriter, job: IdentityJob, batch: GeneratedBatch, scores: dict, kept) -> int:
    records = [{**r, "source_dataset": job.source, "source_pid": job.source_pid} for r in batch.records]
    return writer.add((job.source, job.source_pid), batch.images, records, scores, kept,
                      source_images=job.image_paths[:8], info={"prompt": batch.prompt, "adapter": batch.adapter_dir})


def measure_build_fidelity(cfg: BuildConfig, plan: BuildPlan, progress: bool = False) -> dict | None:
    """OUT/fidelity.json when ``cfg.fidelity.enabled``; a build with nothing to measure (no generated image, one
    identity) is warned about, not failed. Returns the figures, or None."""
    from diffreid.diffperson.fidelity import FidelityUnavailable, measure_fidelity

    if not cfg.fidelity.enabled:
        return None
    try:
        return measure_fidelity(plan.out, cfg.fidelity, progress=progress)
    except FidelityUnavailable as err:
        warnings.warn(f"identity fidelity not measured: {err}", stacklevel=2)
        return None


def finish_build(cfg: BuildConfig, plan: BuildPlan, timings: dict | None = None) -> Path:
    from diffreid.diffperson.report import write_report

    with DiffPersonWriter(plan.out, cfg.writer) as writer:
        for s in plan.skipped:
            writer.skip((s["source"], s["source_pid"]), s["reason"])
    if timings:
        atomic_write_json(Path(plan.out) / "timings.json", timings)
    return write_report(plan.out)


def build_diff_person(cfg: BuildConfig, out_dir: str | Path, progress: bool = True) -> Path:
    """The whole stage in one process, resumable per identity. Returns the report path."""
    from tqdm import tqdm

    t0 = time.time()
    plan = prepare_build(cfg, out_dir, progress=progress)
    timings = {"prepare_s": time.time() - t0}
    with open_writer(cfg, plan) as writer:
        todo = pending_jobs(plan, writer)
    if todo:
        generator = IdentityGenerator(cfg, plan)
        if cfg.adapter.mode == "shared_lora_ti":
            generator.train_shared()
        scorer = IdentityScorer(cfg, plan)
        shared = cfg.adapter.mode == "shared_lora_ti"
        groups = [todo[i:i + 4] for i in range(0, len(todo), 4)] if shared else [[job] for job in todo]
        with open_writer(cfg, plan) as writer, tqdm(total=len(todo), desc="identities", disable=not progress) as bar:
            for group in groups:
                if not shared:
                    generator.train_adapter(group[0])
                batches = generator.generate_many(group) if shared else [generator.generate(group[0])]
                for job, batch in zip(group, batches):
                    scores, kept = scorer.score(job.source, job.source_pid, batch.images)
                    write_identity(writer, job, batch, scores, kept)
                    bar.update(1)
    t1 = time.time()
    measure_build_fidelity(cfg, plan, progress=progress)
    timings["fidelity_s"] = time.time() - t1
    timings["total_s"] = time.time() - t0
    timings["identities_generated"] = len(todo)
    return finish_build(cfg, plan, timings)
