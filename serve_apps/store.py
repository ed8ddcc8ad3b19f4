"""Where the service keeps its state: the store (a folder or an fsspec URL) and the identities' registry.

Store layout (a folder, or any fsspec URL such as ``s3://bucket/prefix``)::

    identities/<id>/state.json            state, progress, counts, options, history
    identities/<id>/work/uploads/NNN.png  the decoded, re-encoded crops
    identities/<id>/work/{captions,refsets,adapters}/   library caches (resume after a crash)
    identities/<id>/work/dataset/         Diff-Person folder of this identity (Market layout + manifest)
    identities/<id>/leases/NNNNNN.json    the job's leases, one generation per file: {owner, expires, released}
    queue/<created_ns>-<id>               one entry per queued or running job, removed when it ends

The filter gallery of an identity is the reference dataset's train images (the rivals that make Re-ID CTF's
softmax meaningful) plus its own uploaded crops under a new pid (``worker.UploadFilter``).
"""
from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from diffreid.errors import DiffreidError

ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
ACTIVE = ("queued", "training", "generating", "filtering")
TERMINAL = ("done", "failed")


class ServiceError(DiffreidError):
    """A request the service answers with ``status`` (4xx: the caller's fault, 5xx: ours) and ``detail``."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


class Cancelled(Exception):
    """The identity was deleted while its job ran."""


class LeaseLost(Exception):
    """Another worker took over this job: our lease expired (we stalled or were cut off from the store)."""


def check_id(ident: str) -> str:
    if not isinstance(ident, str) or not ID_PATTERN.match(ident):
        raise ServiceError(400, f"identity id {str(ident)[:80]!r}: expected 32 lowercase hex characters")
    return ident


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


class Leases:
    """Which worker runs a job, across replicas and restarts, with nothing but the store.

    A lease is a generation file ``identities/<id>/leases/NNNNNN.json``; the newest generation holds the job.
    Claiming creates the next generation with an exclusive create (fsspec mode ``xb``: O_EXCL on a folder, a
    conditional PUT on object stores that offer one), so of two workers racing for a free or expired lease
    exactly one wins. The owner renews its file every ``ttl_s / 3``; a worker that died stops renewing, its
    lease expires and the next claim takes the job over. An owner that finds a newer generation has lost the
    job and stops without writing its state.
    """

    def __init__(self, store: Store, ttl_s: float):
        self.store, self.ttl_s = store, float(ttl_s)

    def _newest(self, ident: str) -> tuple[int, dict | None]:
        names = [n for n in self.store.names("identities", ident, "leases") if re.fullmatch(r"\d{6}\.json", n)]
        if not names:
            return 0, None
        newest = max(names)
        return int(newest[:6]), self.store.read_json("identities", ident, "leases", newest)

    def holder(self, ident: str) -> dict | None:
        """The live lease of ``ident`` (None when free, released or expired)."""
        _, lease = self._newest(ident)
        if lease is None or lease.get("released") or lease["expires"] < time.time():
            return None
        return lease

    def claim(self, ident: str, owner: str) -> int | None:
        """The generation we now hold, or None when another worker holds a live lease."""
        generation, lease = self._newest(ident)
        if lease is not None and not lease.get("released") and lease["expires"] >= time.time() \
                and lease["owner"] != owner:
            return None
        key = self.store.key("identities", ident, "leases", f"{generation + 1:06d}.json")
        body = json.dumps({"owner": owner, "expires": time.time() + self.ttl_s, "released": False}).encode()
        try:
            self.store.fs.makedirs(self.store.key("identities", ident, "leases"), exist_ok=True)
            with self.store.fs.open(key, "xb") as f:
                f.write(body)
        except FileExistsError:
            return None
        return generation + 1

    def renew(self, ident: str, owner: str, generation: int, released: bool = False) -> None:
        newest, lease = self._newest(ident)
        if newest != generation or lease is None or lease["owner"] != owner:
            raise LeaseLost(f"job {ident}: lease generation {newest} is not ours ({generation})")
        lease.update(expires=time.time() + self.ttl_s, released=released)
        self.store.write_json(lease, "identities", ident, "leases", f"{generation:06d}.json")

    def release(self, ident: str, owner: str, generation: int) -> None:
        try:
            self.renew(ident, owner, generation, released=True)
        except (LeaseLost, FileNotFoundError):
            pass
