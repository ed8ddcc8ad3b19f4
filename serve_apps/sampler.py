"""Sampling more images from a finished identity: its adapter loaded into the resident base pipeline (kept by
the Generator's LRU), requests sharing it drawn as one sampler run, every image scored by the job's filters."""
from __future__ import annotations

import base64
import io
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from serve_apps.results import SCORE_KEYS
from serve_apps.settings import ServeSettings
from serve_apps.store import Cancelled, ServiceError
from serve_apps.uploads import job_config
from serve_apps.worker import Assets, PipelineHolder, identity_plan


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


class IdentitySampler(PipelineHolder):
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
        plan, job = identity_plan(self.assets, work, cfg, self.filter.new_pid, caption=state["caption"])
        name = f"u{ident}"  # every upload is pid 1 of its own dataset, so the id names the resident adapter
        with self.lock:
            load_identity_adapter(self.pipe, IdentityGenerator(cfg, plan, pipe=self.pipe).adapter_dir(job), name)
        filters = self.filter.filters_for(cfg, job.image_paths)
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
        (seed, index, prompt), the deciding filter's ``score`` and every enabled filter's ``score_<name>``."""
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
        decide_by = resident.cfg.filter.decide_by
        items = [{"index": g.record["index"], "seed": g.record["seed"], "prompt": g.record["prompt"],
                  "score": float(scores[decide_by][i]), "kept": bool(kept[i]),
                  **{f"score_{key}": float(scores[key][i]) for key in SCORE_KEYS if key in scores},
                  "png_base64": encode_png(g.image)}
                 for i, g in enumerate(generated)]
        out, at = [], 0
        for n, include_dropped in requests:
            mine = items[at:at + n]
            at += n
            out.append({"images": [x for x in mine if x["kept"] or include_dropped],
                        "kept": sum(x["kept"] for x in mine), "dropped": sum(not x["kept"] for x in mine)})
        return out
