"""Reading results back: an identity's public state, its images (every enabled filter's score beside each), one
image file, and the Market-layout archive of its Diff-Person folder."""
from __future__ import annotations

import io
import json
import re
import zipfile

from serve_apps.store import Registry, ServiceError

FILE_PATTERN = re.compile(r"^(bounding_box_train|dropped)/\d{4}_c\ds\d+_\d{6}_00\.(jpg|png)$")
ARCHIVE_FILES = ("manifest.parquet", "identities.json", "pid_map.json", "diffperson.json")
SCORE_KEYS = ("reid_ctf", "reid_ctf_margin", "cctf", "clip")  # score_<key> of each image, when that filter ran


def public_state(state: dict, base_url: str = "") -> dict:
    keys = ("id", "name", "state", "reason", "stage", "progress", "counts", "options", "created", "updated",
            "attempts", "history")
    return {**{k: state.get(k) for k in keys}, "status_url": f"{base_url}/v1/identities/{state['id']}"}


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
    cols = [c for c in ("file", "kept", *(f"score_{key}" for key in SCORE_KEYS), "prompt", "seed", "index",
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
