"""Checking an upload at the boundary and turning it into a queued job: decode and bound every crop, merge the
upload's options with the service's defaults, store the crops and the new identity's state."""
from __future__ import annotations

import io
import time
import uuid
from typing import Any

from serve_apps.settings import JobOptions, ServeLimits, ServeSettings
from serve_apps.store import Registry, ServiceError


def decode_upload(filename: str, data: bytes, limits: ServeLimits) -> Any:
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
    if min(width, height) < limits.min_side:
        raise ServiceError(422, f"file {label}: {width}x{height} pixels; its shorter side {min(width, height)} < "
                                f"limits.min_side {limits.min_side}")
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
