"""Stateful Ray workers over the library's build roles: one base pipeline or one filter set per process.

``GeneratorActor`` wraps :class:`diffreid.build.IdentityGenerator` and keeps identity adapters resident with an
LRU of ``capacity``; ``ScorerActor`` wraps :class:`diffreid.build.IdentityScorer` (Re-ID model + FAISS gallery,
built once per actor from the files saved by ``prepare_build``). Both are Ray Data callable classes
(``__call__(batch) -> batch`` of numpy arrays); ``GeneratorActor`` is also a plain Ray actor
(``ray.remote(GeneratorActor)``) whose ``generate``/``stats`` methods can be called directly.

Batch columns (every value an array, one row per identity):
    in:        pid (int64)
    generated: pid, images (n, H, W, 3) uint8, records (JSON list, one record per image), prompt, adapter_dir,
               seconds (float64)
    scored:    generated + kept (n,) bool + ``score_<name>`` (n,) float64 for every score the filters return
"""
from __future__ import annotations

import gc
import json
import weakref
from collections import OrderedDict
from typing import Any

import numpy as np

from diffreid.build import BuildConfig, BuildPlan, GeneratedBatch, IdentityGenerator, IdentityJob, IdentityScorer

SCORE_PREFIX = "score_"


def _json_default(value: Any):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def stack_rows(arrays: list[np.ndarray]) -> np.ndarray:
    """One column from per-row arrays; rows of different shapes become a ragged (object) column."""
    if len({a.shape for a in arrays}) == 1:
        return np.stack(arrays)
    column = np.empty(len(arrays), dtype=object)
    column[:] = arrays
    return column


def batch_to_rows(batch: GeneratedBatch) -> dict[str, Any]:
    return {"images": np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in batch.images]),
            "records": json.dumps(batch.records, default=_json_default), "prompt": batch.prompt,
            "adapter_dir": batch.adapter_dir, "seconds": float(batch.seconds)}


def row_to_batch(row: dict[str, Any]) -> GeneratedBatch:
    from PIL import Image

    return GeneratedBatch(images=[Image.fromarray(np.asarray(im, dtype=np.uint8)) for im in row["images"]],
                          records=json.loads(str(row["records"])), adapter_dir=str(row["adapter_dir"]),
                          prompt=str(row["prompt"]), seconds=float(row["seconds"]))


def scores_of_row(row: dict[str, Any]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    scores = {k[len(SCORE_PREFIX):]: np.asarray(v) for k, v in row.items() if k.startswith(SCORE_PREFIX)}
    return scores, np.asarray(row["kept"], dtype=bool)


def _lora_parameters(pipe, name: str) -> list:
    """The LoRA tensors of adapter ``name`` in the UNet and text encoder (peft names hold ``.<name>.``)."""
    marker = f".{name}."
    return [p for module in (pipe.unet, pipe.text_encoder)
            for key, p in module.named_parameters() if "lora_" in key and marker in key]


class GeneratorActor:
    """One base pipeline on this process's device; trains and samples identities, adapters kept in an LRU."""

    def __init__(self, cfg: BuildConfig, plan: BuildPlan, capacity: int = 8, pipe=None):
        if capacity < 1:
            raise ValueError(f"adapter LRU capacity must be >= 1, got {capacity}")
        self.cfg, self.capacity = cfg, capacity
        self.jobs = {j.pid: j for j in plan.jobs}
        self.generator = IdentityGenerator(cfg, plan, pipe=pipe)
        self.resident: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self.loads = 0
        self._evicted: weakref.WeakSet = weakref.WeakSet()

    # -- adapters ------------------------------------------------------------------------------------
    def _use(self, job: IdentityJob) -> str:
        """Train (or find) the identity's adapter, make it resident, evict the least recently used beyond
        capacity. The adapter in use is never evicted."""
        folder = self.generator.train_adapter(job)
        name = self.generator.ensure_loaded(job, folder)
        if name not in self.resident:
            self.loads += 1
        self.resident[name] = None
        self.resident.move_to_end(name)
        while len(self.resident) > self.capacity:
            self.evict(next(iter(self.resident)))
        return name

    def evict(self, name: str) -> None:
        self._evicted.update(_lora_parameters(self.generator.pipe, name))
        self.generator.release(name)
        del self.resident[name]
        gc.collect()

    # -- direct actor calls --------------------------------------------------------------------------
    def generate(self, pid: int) -> GeneratedBatch:
        job = self.jobs[pid]
        self._use(job)
        return self.generator.generate(job, keep_loaded=True)

    def generate_many(self, pids: list[int]) -> list[GeneratedBatch]:
        """Several identities; in ``shared_lora_ti`` mode every sampling batch mixes them."""
        if self.cfg.adapter.mode != "shared_lora_ti" or len(pids) == 1:
            return [self.generate(pid) for pid in pids]
        return self._generate_mixed([self.jobs[pid] for pid in pids])

    def _generate_mixed(self, jobs: list[IdentityJob]) -> list[GeneratedBatch]:
        return self.generator.generate_many(jobs, adapter_name=self._use(jobs[0]))

    def stats(self) -> dict[str, Any]:
        """Resident adapters (LRU order), adapter loads so far, LoRA tensors in the modules, and how many
        tensors of evicted adapters are still alive anywhere in the process (0 = their memory was freed)."""
        from diffreid.generation.adapters import loaded_adapters

        gc.collect()
        pipe = self.generator.pipe
        names = list(loaded_adapters(pipe))
        return {"resident": list(self.resident), "loaded": names, "loads": self.loads,
                "lora_tensors": {n: len(_lora_parameters(pipe, n)) for n in names},
                "lora_numel": sum(p.numel() for n in names for p in _lora_parameters(pipe, n)),
                "evicted_alive": len(self._evicted)}

    # -- Ray Data --------------------------------------------------------------------------------------
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pids = [int(p) for p in batch["pid"]]
        rows = [batch_to_rows(b) for b in self.generate_many(pids)]
        out = {"pid": np.asarray(pids, dtype=np.int64), "images": stack_rows([r["images"] for r in rows])}
        for key in ("records", "prompt", "adapter_dir"):
            out[key] = np.asarray([r[key] for r in rows], dtype=object)
        out["seconds"] = np.asarray([r["seconds"] for r in rows], dtype=np.float64)
        return out


class ScorerActor:
    """Re-ID confidence filter (and any other enabled filter) for generated identities, built once."""

    def __init__(self, cfg: BuildConfig, plan: BuildPlan):
        self.jobs = {j.pid: j for j in plan.jobs}
        self.scorer = IdentityScorer(cfg, plan)

    def score(self, pid: int, images: list) -> tuple[dict[str, np.ndarray], np.ndarray]:
        job = self.jobs[pid]
        return self.scorer.score(job.source, job.source_pid, images)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from PIL import Image

        per_row = []
        for pid, images in zip(batch["pid"], batch["images"]):
            scores, kept = self.score(int(pid), [Image.fromarray(np.asarray(im, dtype=np.uint8)) for im in images])
            per_row.append(({k: np.asarray(v, dtype=np.float64) for k, v in scores.items()},
                            np.asarray(kept, dtype=bool)))
        out = dict(batch)
        out["kept"] = stack_rows([kept for _, kept in per_row])
        for name in per_row[0][0]:
            out[SCORE_PREFIX + name] = stack_rows([scores[name] for scores, _ in per_row])
        return out
