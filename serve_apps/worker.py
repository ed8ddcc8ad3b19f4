"""The job worker and what it shares with the sampler: the service's assets (made the build's way), the
upload filter (the build's filters over the reference gallery + the upload), one resident base pipeline.

    assets = prepare_assets(settings)        # base model, reference set, filter models, cached gallery
    runner = JobRunner(settings, assets)     # caption -> reference set -> adapter -> sample -> filter -> write
    runner.serve_forever(stop)               # or runner.run(ident) for one queued identity
"""
from __future__ import annotations

import fcntl
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from diffreid.build import BuildConfig
from diffreid.filtering.base import FilterConfig
from diffreid.models.assets import TINY_MODEL
from serve_apps.settings import ServeSettings
from serve_apps.store import TERMINAL, Cancelled, LeaseLost, Leases, Registry, ServiceError, Store
from serve_apps.uploads import job_config

SOURCE = "upload"


# ----------------------------------------------------------------------------------------------------------
# 1. assets shared by every replica: base model, reference dataset, filter models, cached gallery
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Assets:
    base_model_path: str
    reid_model_dir: str
    clip_model_dir: str | None  # None unless "clip" is among build.filter.filters
    filter_dir: str  # build_filters' cache (reference gallery, CCTF head) unless build.filter.gallery_dir is set
    reference_root: str
    reference_records: list  # the reference dataset's train records: the gallery's rival identities


def prepare_assets(settings: ServeSettings, progress: bool = False) -> Assets:
    """Build (once, under a file lock so replicas on one node do not race) or find the service's assets, each
    the way ``diffreid.build`` makes it for a source: base model, reference dataset, filter models, gallery."""
    from diffreid.build import base_model_path, ensure_filter_model
    from diffreid.data.sources import load_source
    from diffreid.filtering import build_filters, clip_model_path

    cfg, src = settings.build, settings.reference
    root = Path(settings.assets_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        base = base_model_path(cfg, root)
        ref_root, dataset = load_source(src, root)
        folder = root / "filters" / src.name
        reid_dir = cfg.filter.reid_model_dir or str(
            ensure_filter_model(cfg, dataset.train, folder / "reid_model", progress))
        assets = Assets(base_model_path=str(base), reid_model_dir=reid_dir,
                        clip_model_dir=clip_model_path(cfg.filter, root, tiny=cfg.base_model.path == TINY_MODEL),
                        filter_dir=str(folder), reference_root=str(ref_root), reference_records=dataset.train)
        # the reference gallery is cached here, once; every job only reads it and adds its upload in memory.
        # Only the gallery: CCTF's head and CLIP depend on the upload and are built per job when enabled.
        if "reid_ctf" in cfg.filter.filters:
            gallery_only = filter_config(cfg.filter, assets).model_copy(update={"filters": ["reid_ctf"]})
            build_filters(gallery_only, dataset.train, runtime=cfg.runtime, cache_dir=folder)
    return assets


def filter_config(cfg: FilterConfig, assets: Assets) -> FilterConfig:
    """A job's FilterConfig with the model folders the assets hold."""
    return cfg.model_copy(update={"reid_model_dir": assets.reid_model_dir, "clip_model_dir": assets.clip_model_dir})


class UploadFilter:
    """The build's filters (``build_filters``) for an uploaded identity: the reference dataset's cached gallery
    plus the identity's own crops under ``new_pid`` (above every reference pid), which it is scored against."""

    def __init__(self, assets: Assets):
        self.assets = assets
        self.new_pid = max(r.pid for r in assets.reference_records) + 1  # never a reference identity

    def filters_for(self, cfg: BuildConfig, upload_paths: list[str]) -> dict:
        """Every enabled filter of the job config ``cfg`` (its thresholds), over reference + upload."""
        from diffreid.data.types import ImageRecord
        from diffreid.filtering import build_filters

        own = [ImageRecord(path, self.new_pid, 0) for path in upload_paths]
        return build_filters(filter_config(cfg.filter, self.assets), self.assets.reference_records,
                             runtime=cfg.runtime, cache_dir=self.assets.filter_dir, extra_records=own)

    def score(self, filters: dict, images: list, cfg: BuildConfig) -> tuple[dict, np.ndarray]:
        from diffreid.filtering import decide, score_all

        scores = score_all(filters, images, [self.new_pid] * len(images))
        return scores, decide(scores, cfg.filter)


# ----------------------------------------------------------------------------------------------------------
# 2. the job worker: caption -> reference set -> adapter -> sample -> filter -> write
# ----------------------------------------------------------------------------------------------------------
def identity_plan(assets: Assets, work: Path, cfg, new_pid: int, caption: str | None = None):
    """The one-identity BuildPlan of an upload (plan.out = its work folder)."""
    from diffreid.build import BuildPlan, IdentityJob, caption_all
    from diffreid.diffperson.writer import PidMapper, PID_MAP

    uploads = sorted(str(p) for p in (work / "uploads").glob("*.png"))
    if not uploads:
        raise ServiceError(500, f"identity work folder {work} has no uploads")
    pid = PidMapper(work / "dataset" / PID_MAP).pid(SOURCE, new_pid)
    job = IdentityJob(source=SOURCE, source_pid=new_pid, pid=pid, image_paths=uploads,
                      sequence_paths=uploads[:cfg.lpe.max_images])
    plan = BuildPlan(out=str(work), base_model_path=assets.base_model_path, jobs=[job], skipped=[],
                     source_records={}, filter_model_dirs={SOURCE: assets.reid_model_dir})
    plan.captions = {pid: caption} if caption is not None else caption_all(cfg, plan)
    return plan, job


def load_base(settings: ServeSettings, assets: Assets):
    from diffreid.models.pipeline import load_pipeline

    cfg = settings.build
    return load_pipeline(cfg.base_model.model_copy(update={"path": assets.base_model_path, "runtime": cfg.runtime}))


class PipelineHolder:
    """The state a job runner and a sampler share: store, assets, one resident base pipeline, the filter."""

    def __init__(self, settings: ServeSettings, assets: Assets | None = None, pipe=None):
        self.settings = settings
        self.registry = Registry(Store(settings.storage, settings.scratch_dir))
        self.assets = assets or prepare_assets(settings)
        self.pipe = pipe if pipe is not None else load_base(settings, self.assets)
        self.filter = UploadFilter(self.assets)


class Heartbeat:
    """Renews a job's lease every ttl/3 in a thread; ``guard(fn)`` makes ``fn`` raise LeaseLost once it is lost."""

    def __init__(self, leases: Leases, ident: str, owner: str, generation: int):
        self.leases, self.ident, self.owner, self.generation = leases, ident, owner, generation
        self.lost, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{ident[:8]}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.leases.ttl_s / 3):
            try:
                self.leases.renew(self.ident, self.owner, self.generation)
            except LeaseLost:
                self.lost.set()
                return
            except FileNotFoundError:  # the identity was deleted: the job notices through Cancelled
                return

    def guard(self, fn):
        def guarded(*args, **kwargs):
            if self.lost.is_set():
                raise LeaseLost(f"job {self.ident}: lease lost")
            return fn(*args, **kwargs)
        return guarded

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class JobRunner(PipelineHolder):
    """The job worker: caption -> reference set -> adapter -> sample -> filter -> write, one job at a time."""

    def __init__(self, settings: ServeSettings, assets: Assets | None = None, pipe=None):
        super().__init__(settings, assets, pipe)
        self.wake = threading.Event()
        self.leases = Leases(self.registry.store, settings.lease_ttl_s)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.on_event: Callable[[str, dict], None] = lambda event, state: None  # started/done/failed/queue

    def claim(self, ident: str) -> dict | None:
        """Start (or resume) a job; a job whose workers died ``max_attempts`` times is failed instead."""
        state = self.registry.read(ident)
        if state is None or state["state"] in TERMINAL:
            self.registry.dequeue(ident)
            return None
        if state["attempts"] >= self.settings.max_attempts:
            self.registry.update(ident, state="failed", note="gave up",
                                 reason=f"the worker stopped {state['attempts']} times while this job was at "
                                        f"stage {state['stage']!r} (max_attempts {self.settings.max_attempts})")
            self.registry.dequeue(ident)
            return None
        note = f"resumed at stage {state['stage']!r} after a worker restart" if state["state"] != "queued" else "started"
        return self.registry.update(ident, note=note, attempts=state["attempts"] + 1, worker_pid=os.getpid())

    def run(self, ident: str) -> dict | None:
        """Run one identity's job to done or failed under its lease; returns its final state (None: deleted
        meanwhile, or run by another worker)."""
        generation = self.leases.claim(ident, self.owner)
        if generation is None:
            return None  # another worker runs it
        heartbeat = Heartbeat(self.leases, ident, self.owner, generation)
        try:
            final = self._run_claimed(ident, heartbeat)
            if final is not None:
                self.on_event(final["state"], final)
            return final
        except LeaseLost:
            return None  # the new owner finishes it
        finally:
            heartbeat.stop()
            if not heartbeat.lost.is_set():
                self.leases.release(ident, self.owner, generation)
            if self.registry.read(ident) is None:  # deleted: no lease file may outlive it
                self.registry.store.remove("identities", ident)

    def _run_claimed(self, ident: str, heartbeat: "Heartbeat") -> dict | None:
        from diffreid.build import IdentityGenerator, identity_prompt, write_identity
        from diffreid.diffperson.writer import DiffPersonWriter

        state = self.claim(ident)
        if state is None:
            return None
        self.on_event("started", state)
        reg, store = self.registry, self.registry.store
        update = heartbeat.guard(reg.update)
        stage = "training"
        try:
            work = store.pull("identities", ident, "work")
            cfg = job_config(self.settings, state["options"])
            update(ident, state="training", stage="training", progress=0.1)
            plan, job = identity_plan(self.assets, work, cfg, self.filter.new_pid)
            prompt = identity_prompt(cfg, plan.captions[job.pid], job.pid)
            gen = IdentityGenerator(cfg, plan, pipe=self.pipe)
            gen.train_adapter(job)
            store.push("identities", ident, "work")
            stage = "generating"
            update(ident, state="generating", stage=stage, progress=0.6, caption=plan.captions[job.pid],
                       prompt=prompt)
            batch = gen.generate(job)
            stage = "filtering"
            update(ident, state="filtering", stage=stage, progress=0.85)
            filters = self.filter.filters_for(cfg, job.image_paths)
            scores, kept = self.filter.score(filters, batch.images, cfg)
            with DiffPersonWriter(work / "dataset", cfg.writer) as writer:
                write_identity(writer, job, batch, scores, kept)
            store.push("identities", ident, "work")
            n_kept = int(np.sum(kept))
            return update(ident, state="done", stage=None, progress=1.0, reason=None,
                              next_index=cfg.sampler.num_images,
                              counts={**state["counts"], "kept": n_kept, "dropped": len(kept) - n_kept})
        except Cancelled:
            store.remove("identities", ident)
            return None
        except LeaseLost:
            raise
        except Exception as err:  # a failed job is reported in its state, never silently dropped
            try:
                return update(ident, state="failed", reason=f"{stage}: {type(err).__name__}: {err}"[:2000])
            except Cancelled:
                return None
        finally:
            if not heartbeat.lost.is_set():
                reg.dequeue(ident)
                if self.registry.read(ident) is None:
                    store.remove("identities", ident)

    def run_pending(self) -> int:
        done = 0
        queue = self.registry.queue()
        self.on_event("queue", {"length": len(queue)})
        for ident in queue:
            if self.run(ident) is not None:
                done += 1
        return done

    def serve_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if not self.run_pending():
                self.wake.wait(self.settings.worker_poll_s)
                self.wake.clear()
