"""The augmentation service without Ray: storage, request checks, the job worker and the sampler.

The Serve deployments in ``app.py`` are thin wrappers over these classes; every stage is the library's
(``diffreid.build``: captions, reference set, adapter, sampling; ``diffreid.filtering``: Re-ID CTF;
``diffreid.diffperson``: Market layout + manifest).

Store layout (a folder, or any fsspec URL such as ``s3://bucket/prefix``)::

    identities/<id>/state.json            state, progress, counts, options, history
    identities/<id>/work/uploads/NNN.png  the decoded, re-encoded crops
    identities/<id>/work/{captions,refsets,adapters}/   library caches (resume after a crash)
    identities/<id>/work/dataset/         Diff-Person folder of this identity (Market layout + manifest)
    queue/<created_ns>-<id>               one entry per queued or running job, removed when it ends

The filter gallery of an identity is its own uploaded crops (claimed pid = ``new_pid``) plus the reference
dataset's train images (the rivals that make Re-ID CTF's softmax meaningful).
"""
from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import re
import tempfile
import threading
import time
import uuid
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffreid.errors import DiffreidError
from serve_apps.settings import JobOptions, ServeSettings

ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
FILE_PATTERN = re.compile(r"^(bounding_box_train|dropped)/\d{4}_c\ds\d+_\d{6}_00\.(jpg|png)$")
ACTIVE = ("queued", "training", "generating", "filtering")
TERMINAL = ("done", "failed")
SOURCE = "upload"
ARCHIVE_FILES = ("manifest.parquet", "identities.json", "pid_map.json", "diffperson.json")


class ServiceError(DiffreidError):
    """A request the service answers with ``status`` (4xx: the caller's fault, 5xx: ours) and ``detail``."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


class Cancelled(Exception):
    """The identity was deleted while its job ran."""


def check_id(ident: str) -> str:
    if not isinstance(ident, str) or not ID_PATTERN.match(ident):
        raise ServiceError(400, f"identity id {str(ident)[:80]!r}: expected 32 lowercase hex characters")
    return ident


# ----------------------------------------------------------------------------------------------------------
# 1. storage
# ----------------------------------------------------------------------------------------------------------
class Store:
    """Keys are '/'-joined parts under the storage root; local folders get atomic writes (temp + rename),
    object stores get whole-object PUTs (atomic by nature)."""

    def __init__(self, url: str, scratch_dir: str = ""):
        import fsspec

        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = root.rstrip("/") or "/"
        self.is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self.scratch = Path(scratch_dir or Path(tempfile.gettempdir()) / "diffreid-serve")

    def key(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def local(self, *parts: str) -> Path:
        """Where ``parts`` live on this machine: in the store itself when local, else under scratch."""
        return Path(self.key(*parts)) if self.is_local else self.scratch.joinpath(*parts)

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.key(*parts))

    def read_bytes(self, *parts: str) -> bytes:
        return self.fs.cat_file(self.key(*parts))

    def write_bytes(self, data: bytes, *parts: str) -> None:
        if self.is_local:
            from diffreid.io import atomic_write_bytes

            atomic_write_bytes(self.key(*parts), data)
        else:
            self.fs.pipe_file(self.key(*parts), data)

    def read_json(self, *parts: str) -> dict | None:
        try:
            return json.loads(self.read_bytes(*parts))
        except FileNotFoundError:
            return None

    def write_json(self, obj: Any, *parts: str) -> None:
        self.write_bytes((json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode(), *parts)

    def names(self, *parts: str) -> list[str]:
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.key(*parts), detail=False))
        except FileNotFoundError:
            return []

    def remove(self, *parts: str) -> None:
        try:
            self.fs.rm(self.key(*parts), recursive=True)
        except FileNotFoundError:
            pass

    def pull(self, *parts: str) -> Path:
        """Make ``parts`` (a folder) present locally and return its local path (no copy for a local store)."""
        local = self.local(*parts)
        if not self.is_local and self.fs.exists(self.key(*parts)):
            local.mkdir(parents=True, exist_ok=True)
            self.fs.get(self.key(*parts) + "/", str(local) + "/", recursive=True)
        return local

    def push(self, *parts: str) -> None:
        """Upload the local copy of folder ``parts`` (a no-op for a local store)."""
        local = self.local(*parts)
        if not self.is_local and local.is_dir():
            self.fs.put(str(local) + "/", self.key(*parts) + "/", recursive=True)


# ----------------------------------------------------------------------------------------------------------
# 2. identities: state and queue
# ----------------------------------------------------------------------------------------------------------
class Registry:
    def __init__(self, store: Store):
        self.store = store

    def read(self, ident: str) -> dict | None:
        return self.store.read_json("identities", check_id(ident), "state.json")

    def state(self, ident: str) -> dict:
        state = self.read(ident)
        if state is None:
            raise ServiceError(404, f"identity {ident} does not exist (never created, or deleted)")
        return state

    def save(self, state: dict) -> None:
        state["updated"] = time.time()
        self.store.write_json(state, "identities", state["id"], "state.json")

    def update(self, ident: str, note: str | None = None, **changes) -> dict:
        """Change fields of a live identity's state; raises Cancelled when it was deleted meanwhile."""
        state = self.read(ident)
        if state is None:
            raise Cancelled(ident)
        state.update(changes)
        if note or "state" in changes:
            state["history"].append({"t": time.time(), "state": state["state"], "note": note or ""})
        self.save(state)
        return state

    def enqueue(self, state: dict) -> None:
        self.store.write_bytes(b"", "queue", f"{int(state['created'] * 1e9):020d}-{state['id']}")

    def dequeue(self, ident: str) -> None:
        for name in self.store.names("queue"):
            if name.endswith(f"-{ident}"):
                self.store.remove("queue", name)

    def queue(self) -> list[str]:
        """Ids queued or running, oldest first."""
        return [n.split("-", 1)[1] for n in self.store.names("queue") if "-" in n]

    def identities(self) -> list[str]:
        return [n for n in self.store.names("identities") if ID_PATTERN.match(n)]

    def delete(self, ident: str) -> None:
        self.state(ident)
        self.dequeue(ident)
        self.store.remove("identities", ident)


def public_state(state: dict, base_url: str = "") -> dict:
    keys = ("id", "name", "state", "reason", "stage", "progress", "counts", "options", "created", "updated",
            "attempts", "history")
    return {**{k: state.get(k) for k in keys}, "status_url": f"{base_url}/v1/identities/{state['id']}"}


# ----------------------------------------------------------------------------------------------------------
# 3. request checks
# ----------------------------------------------------------------------------------------------------------
def decode_upload(filename: str, data: bytes, limits) -> Any:
    """One uploaded crop as an RGB PIL image; every rejection is a ServiceError naming the file and the limit."""
    from PIL import Image, UnidentifiedImageError

    label = repr(str(filename or "<unnamed>")[:80])
    if len(data) > limits.max_file_bytes:
        raise ServiceError(413, f"file {label}: {len(data)} bytes > limits.max_file_bytes {limits.max_file_bytes}")
    if not data:
        raise ServiceError(422, f"file {label} is empty")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ServiceError(415, f"file {label} is not an image (expected one of {limits.formats}, "
                                "checked by decoding, not by name)") from None
    except Image.DecompressionBombError as err:
        raise ServiceError(413, f"file {label}: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ServiceError(422, f"file {label}: truncated or corrupt image ({err})") from None
    if image.format not in limits.formats:
        raise ServiceError(415, f"file {label} is {image.format}; allowed formats: {limits.formats}")
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ServiceError(413, f"file {label}: {width}x{height} = {width * height} pixels > limits.max_pixels "
                                f"{limits.max_pixels}")
    try:
        image.load()
        return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ServiceError(422, f"file {label}: truncated or corrupt {image.format} ({err})") from None


def merge_options(settings: ServeSettings, options: JobOptions | None) -> JobOptions:
    given = options.model_dump(exclude_none=True) if options else {}
    merged = JobOptions(**{**settings.defaults.model_dump(exclude_none=True), **given})
    limits = settings.limits
    if merged.num_images is not None and merged.num_images > limits.max_num_images:
        raise ServiceError(422, f"num_images {merged.num_images} > limits.max_num_images {limits.max_num_images}")
    if merged.steps is not None and merged.steps > limits.max_adapter_steps:
        raise ServiceError(422, f"steps {merged.steps} > limits.max_adapter_steps {limits.max_adapter_steps}")
    return merged


def job_config(settings: ServeSettings, options: dict):
    """The BuildConfig of one identity: the service's build config with the upload's options applied."""
    from diffreid.build import BuildConfig

    opts = JobOptions.model_validate(options)
    data = settings.build.model_dump()
    if opts.num_images is not None:
        data["sampler"]["num_images"] = opts.num_images
    if opts.adapter_mode is not None:
        data["adapter"]["mode"] = opts.adapter_mode
    if opts.steps is not None:
        data["adapter"]["steps"] = opts.steps
    if opts.seed is not None:
        data["runtime"]["seed"] = opts.seed
        data["sampler"]["seed_base"] = opts.seed
    if opts.threshold is not None:
        data["filter"]["threshold"] = opts.threshold
    return BuildConfig.model_validate(data)


def create_identity(settings: ServeSettings, registry: Registry, name: str | None, options: JobOptions | None,
                    files: list[tuple[str, bytes]]) -> dict:
    """Check an upload, store its crops and state, and queue its job. Returns the new state."""
    limits = settings.limits
    if name is not None and (len(name) > limits.max_name_chars or not name.isprintable()):
        raise ServiceError(422, f"name: expected at most {limits.max_name_chars} printable characters")
    if len(files) < limits.min_images:
        raise ServiceError(422, f"{len(files)} images uploaded; expected at least limits.min_images "
                                f"{limits.min_images} crops of one person (multipart field 'images')")
    if len(files) > limits.max_images:
        raise ServiceError(413, f"{len(files)} images uploaded > limits.max_images {limits.max_images}")
    total = sum(len(data) for _, data in files)
    if total > limits.max_request_bytes:
        raise ServiceError(413, f"{total} bytes uploaded > limits.max_request_bytes {limits.max_request_bytes}")
    merged = merge_options(settings, options)
    images = [decode_upload(fname, data, limits) for fname, data in files]
    if len(registry.queue()) >= limits.max_queued_jobs:
        raise ServiceError(429, f"{limits.max_queued_jobs} jobs are queued or running (limits.max_queued_jobs); "
                                "retry later", headers={"Retry-After": str(limits.retry_after_s)})
    ident = uuid.uuid4().hex
    now = time.time()
    for i, image in enumerate(images):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        registry.store.write_bytes(buf.getvalue(), "identities", ident, "work", "uploads", f"{i:03d}.png")
    state = {"id": ident, "name": name, "state": "queued", "reason": None, "stage": None, "progress": 0.0,
             "counts": {"uploaded": len(images), "kept": 0, "dropped": 0}, "options": merged.model_dump(),
             "created": now, "updated": now, "attempts": 0, "caption": None, "prompt": None,
             "next_index": None, "history": [{"t": now, "state": "queued", "note": "uploaded"}]}
    registry.save(state)
    registry.enqueue(state)
    return state


# ----------------------------------------------------------------------------------------------------------
# 4. assets shared by every replica: base model, filter Re-ID model, reference gallery
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Assets:
    base_model_path: str
    reid_model_dir: str
    gallery_dir: str
    reference_root: str


def prepare_assets(settings: ServeSettings, progress: bool = False) -> Assets:
    """Build (once, under a file lock so replicas on one node do not race) or find the service's assets."""
    from diffreid.build import base_model_path, ensure_filter_model
    from diffreid.data import load_dataset
    from diffreid.data.sources import source_root
    from diffreid.filtering import build_or_load, model_extractor, model_key

    cfg, src = settings.build, settings.reference
    root = Path(settings.assets_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        base = base_model_path(cfg, root)
        ref_root = str(source_root(src, root))
        records = load_dataset(src.dataset, ref_root, **src.reader_options).train
        reid_dir = cfg.filter.reid_model_dir or str(
            ensure_filter_model(cfg, records, root / "filters" / src.name / "reid_model", progress))
        gallery_dir = root / "filters" / src.name / "reid_gallery"
        f = cfg.filter
        build_or_load(gallery_dir, records, model_extractor(reid_dir, cfg.runtime, f.batch_size),
                      model_key=model_key(reid_dir), index_type=f.index_type, ivf_nlist=f.ivf_nlist,
                      ivf_nprobe=f.ivf_nprobe, hnsw_m=f.hnsw_m, hnsw_ef_search=f.hnsw_ef_search)
    return Assets(base_model_path=str(base), reid_model_dir=reid_dir, gallery_dir=str(gallery_dir),
                  reference_root=str(ref_root))


class UploadFilter:
    """Re-ID CTF for uploaded identities: the reference gallery plus the identity's own crops."""

    def __init__(self, settings: ServeSettings, assets: Assets):
        from diffreid.filtering import FaissGallery, model_extractor

        self.cfg = settings.build.filter
        self.extract = model_extractor(assets.reid_model_dir, settings.build.runtime, self.cfg.batch_size)
        self.reference = FaissGallery.load(assets.gallery_dir)
        self.new_pid = int(self.reference.pids.max()) + 1  # never a reference identity

    def filters_for(self, upload_paths: list[str], threshold: float) -> dict:
        from diffreid.filtering import FaissGallery, ReIDCTF
        from diffreid.filtering.gallery import l2_normalise

        own = l2_normalise(self.extract(list(upload_paths)))
        gallery = FaissGallery.build(np.concatenate([self.reference.features, own]),
                                     np.concatenate([self.reference.pids, np.full(len(own), self.new_pid)]))
        return {"reid_ctf": ReIDCTF(self.extract, gallery, mode=self.cfg.reid_confidence,
                                    temperature=self.cfg.temperature, search_k=self.cfg.search_k,
                                    threshold=threshold)}

    def score(self, filters: dict, images: list, cfg) -> tuple[dict, np.ndarray]:
        from diffreid.filtering import decide, score_all

        scores = score_all(filters, images, [self.new_pid] * len(images))
        return scores, decide(scores, cfg.filter)


def identity_plan(settings: ServeSettings, assets: Assets, work: Path, cfg, new_pid: int,
                  caption: str | None = None):
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


# ----------------------------------------------------------------------------------------------------------
# 5. the job worker: caption -> reference set -> adapter -> sample -> filter -> write
# ----------------------------------------------------------------------------------------------------------
class _PipelineHolder:
    """The state a job runner and a sampler share: store, assets, one resident base pipeline, the filter."""

    def __init__(self, settings: ServeSettings, assets: Assets | None = None, pipe=None):
        self.settings = settings
        self.registry = Registry(Store(settings.storage, settings.scratch_dir))
        self.assets = assets or prepare_assets(settings)
        self.pipe = pipe if pipe is not None else load_base(settings, self.assets)
        self.filter = UploadFilter(settings, self.assets)


class JobRunner(_PipelineHolder):
    def __init__(self, settings: ServeSettings, assets: Assets | None = None, pipe=None):
        super().__init__(settings, assets, pipe)
        self.wake = threading.Event()

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
        """Run one identity's job to done or failed; returns its final state (None: deleted meanwhile)."""
        from diffreid.build import IdentityGenerator, identity_prompt, write_identity
        from diffreid.diffperson.writer import DiffPersonWriter

        state = self.claim(ident)
        if state is None:
            return None
        reg, store = self.registry, self.registry.store
        stage = "training"
        try:
            work = store.pull("identities", ident, "work")
            cfg = job_config(self.settings, state["options"])
            reg.update(ident, state="training", stage="training", progress=0.1)
            plan, job = identity_plan(self.settings, self.assets, work, cfg, self.filter.new_pid)
            prompt = identity_prompt(cfg, plan.captions[job.pid], job.pid)
            gen = IdentityGenerator(cfg, plan, pipe=self.pipe)
            gen.train_adapter(job)
            store.push("identities", ident, "work")
            stage = "generating"
            reg.update(ident, state="generating", stage=stage, progress=0.6, caption=plan.captions[job.pid],
                       prompt=prompt)
            batch = gen.generate(job)
            stage = "filtering"
            reg.update(ident, state="filtering", stage=stage, progress=0.85)
            filters = self.filter.filters_for(job.image_paths, cfg.filter.threshold_of("reid_ctf"))
            scores, kept = self.filter.score(filters, batch.images, cfg)
            with DiffPersonWriter(work / "dataset", cfg.writer) as writer:
                write_identity(writer, job, batch, scores, kept)
            store.push("identities", ident, "work")
            n_kept = int(np.sum(kept))
            return reg.update(ident, state="done", stage=None, progress=1.0, reason=None,
                              next_index=cfg.sampler.num_images,
                              counts={**state["counts"], "kept": n_kept, "dropped": len(kept) - n_kept})
        except Cancelled:
            store.remove("identities", ident)
            return None
        except Exception as err:  # a failed job is reported in its state, never silently dropped
            try:
                return reg.update(ident, state="failed", reason=f"{stage}: {type(err).__name__}: {err}"[:2000])
            except Cancelled:
                return None
        finally:
            reg.dequeue(ident)
            if self.registry.read(ident) is None:
                store.remove("identities", ident)

    def run_pending(self) -> int:
        done = 0
        for ident in self.registry.queue():
            if self.run(ident) is not None:
                done += 1
        return done

    def serve_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if not self.run_pending():
                self.wake.wait(self.settings.worker_poll_s)
                self.wake.clear()


# ----------------------------------------------------------------------------------------------------------
# 6. sampling more images from a finished identity's adapter
# ----------------------------------------------------------------------------------------------------------
@dataclass
class ResidentIdentity:
    """One identity's adapter loaded in the sampler's pipeline; ``release`` frees it (idempotent)."""

    ident: str
    name: str
    pid: int
    prompt: str
    cfg: Any
    filters: dict
    next_index: int
    init_images: list[str] = field(default_factory=list)
    on_release: Any = None
    released: bool = field(default=False)

    def release(self) -> None:
        if not self.released:
            self.released = True
            if self.on_release is not None:
                self.on_release(self)

    def __del__(self) -> None:  # Serve's multiplexed LRU calls this on eviction
        self.release()


def encode_png(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class IdentitySampler(_PipelineHolder):
    """Holds one base pipeline; loads identities' adapters into it and samples + filters more images."""

    def __init__(self, settings: ServeSettings, assets: Assets | None = None, pipe=None):
        super().__init__(settings, assets, pipe)
        self.loads: Counter[str] = Counter()
        self.evictions = 0
        self.lock = threading.RLock()  # the pipeline is used by one call at a time

    def load(self, ident: str) -> ResidentIdentity:
        from diffreid.build import IdentityGenerator
        from diffreid.generation.adapters import load_identity_adapter

        state = self.registry.state(ident)
        if state["state"] != "done":
            raise ServiceError(409, f"identity {ident} is {state['state']}"
                                    + (f" ({state['reason']})" if state.get("reason") else "")
                                    + "; /generate needs a finished identity")
        store = self.registry.store
        work = store.pull("identities", ident, "work")
        cfg = job_config(self.settings, state["options"])
        plan, job = identity_plan(self.settings, self.assets, work, cfg, self.filter.new_pid, caption=state["caption"])
        name = f"u{ident}"  # every upload is pid 1 of its own dataset, so the id names the resident adapter
        with self.lock:
            load_identity_adapter(self.pipe, IdentityGenerator(cfg, plan, pipe=self.pipe).adapter_dir(job), name)
        filters = self.filter.filters_for(job.image_paths, cfg.filter.threshold_of("reid_ctf"))
        self.loads[ident] += 1
        return ResidentIdentity(ident=ident, name=name, pid=job.pid, prompt=state["prompt"], cfg=cfg, filters=filters,
                                next_index=state["next_index"] or cfg.sampler.num_images, init_images=job.image_paths,
                                on_release=self._unload)

    def _unload(self, resident: ResidentIdentity) -> None:
        from diffreid.generation.adapters import delete_adapter, loaded_adapters

        with self.lock:
            if resident.name in loaded_adapters(self.pipe):
                delete_adapter(self.pipe, resident.name)
        self.evictions += 1

    def resident(self) -> list[str]:
        from diffreid.generation.adapters import loaded_adapters

        return sorted(loaded_adapters(self.pipe))

    def sample(self, resident: ResidentIdentity, requests: list[tuple[int, bool]]) -> list[dict]:
        """Requests sharing one adapter, drawn as one sampler run and split back; each image keeps its record
        (seed, index, prompt) and its Re-ID CTF score."""
        from diffreid.generation.sampler import sample_identity

        total = sum(n for n, _ in requests)
        start = resident.next_index
        resident.next_index += total
        cfg = resident.cfg.sampler.model_copy(update={"num_images": total})
        with self.lock:
            generated = sample_identity(self.pipe, resident.name, resident.prompt, resident.pid, cfg, start_index=start,
                                        init_images=resident.init_images)
        images = [g.image for g in generated]
        scores, kept = self.filter.score(resident.filters, images, resident.cfg)
        try:
            self.registry.update(resident.ident, next_index=resident.next_index)
        except Cancelled:
            pass
        items = [{"index": g.record["index"], "seed": g.record["seed"], "prompt": g.record["prompt"],
                  "score": float(scores["reid_ctf"][i]), "kept": bool(kept[i]), "png_base64": encode_png(g.image)}
                 for i, g in enumerate(generated)]
        out, at = [], 0
        for n, include_dropped in requests:
            mine = items[at:at + n]
            at += n
            out.append({"images": [x for x in mine if x["kept"] or include_dropped],
                        "kept": sum(x["kept"] for x in mine), "dropped": sum(not x["kept"] for x in mine)})
        return out


# ----------------------------------------------------------------------------------------------------------
# 7. reading results
# ----------------------------------------------------------------------------------------------------------
def require_done(registry: Registry, ident: str) -> dict:
    state = registry.state(ident)
    if state["state"] != "done":
        raise ServiceError(409, f"identity {ident} is {state['state']}"
                                + (f" ({state['reason']})" if state.get("reason") else "") + "; results exist once done")
    return state


def list_images(registry: Registry, ident: str, include_dropped: bool = False) -> list[dict]:
    from diffreid.diffperson.manifest import read_manifest

    require_done(registry, ident)
    df = read_manifest(registry.store.pull("identities", ident, "work", "dataset"))
    if not include_dropped:
        df = df[df["kept"]]
    cols = [c for c in ("file", "kept", "score_reid_ctf", "score_reid_ctf_margin", "prompt", "seed", "index",
                        "adapter", "scheduler", "steps", "guidance") if c in df]
    rows = json.loads(df[cols].to_json(orient="records"))
    return [{**r, "url": f"/v1/identities/{ident}/files/{r['file']}"} for r in rows]


def read_image(registry: Registry, ident: str, rel: str) -> bytes:
    require_done(registry, ident)
    if not FILE_PATTERN.match(rel):
        raise ServiceError(400, f"file {rel[:120]!r}: expected bounding_box_train/ or dropped/ + a Market name")
    try:
        return registry.store.read_bytes("identities", ident, "work", "dataset", rel)
    except FileNotFoundError:
        raise ServiceError(404, f"identity {ident} has no file {rel}") from None


def build_archive(registry: Registry, ident: str, include_dropped: bool = False) -> bytes:
    """A zip of the identity's Diff-Person folder: Market layout images + manifest files."""
    require_done(registry, ident)
    root = registry.store.pull("identities", ident, "work", "dataset")
    folders = ["bounding_box_train"] + (["dropped"] if include_dropped else [])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in ARCHIVE_FILES:
            if (root / name).is_file():
                zf.write(root / name, name)
        for folder in folders:
            for path in sorted((root / folder).glob("*")) if (root / folder).is_dir() else []:
                if not path.name.startswith("."):
                    zf.write(path, f"{folder}/{path.name}")
    return buf.getvalue()
