"""The service's HTTP contract: the body of every request and response, the path-parameter patterns, and the one
error body every 4xx/5xx carries. ``app.py`` declares them on its routes, so /openapi.json describes them."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from serve_apps.results import FILE_PATTERN
from serve_apps.settings import JobOptions
from serve_apps.store import ID_PATTERN

API_VERSION = "1"  # the /v1/ of every route; a client of another version reads the bodies below differently
API = f"/v{API_VERSION}/identities"
IDENTITY_ID = ID_PATTERN.pattern  # 32 lowercase hex characters (a uuid4 without dashes)
DATASET_FILE = FILE_PATTERN.pattern  # bounding_box_train/ or dropped/ + a Market-1501 file name
IdentityStateName = Literal["queued", "training", "generating", "filtering", "done", "failed"]


def score_field():
    return Field(None, ge=0, le=1, description="this filter's score in [0, 1]; null when it is not enabled")


class ErrorBody(BaseModel):
    """Every error: one line naming the field, file or limit and what was expected."""

    detail: str = Field(..., description="what was wrong and what was expected")


class Health(BaseModel):
    status: Literal["ok"]


class Counts(BaseModel):
    uploaded: int = Field(..., ge=0, description="crops accepted at upload")
    kept: int = Field(..., ge=0, description="generated images the deciding filter kept")
    dropped: int = Field(..., ge=0, description="generated images it dropped")


class HistoryEntry(BaseModel):
    t: float = Field(..., description="unix time")
    state: IdentityStateName
    note: str


class IdentityState(BaseModel):
    """An identity's job: where it is, what it produced, and the options it runs with."""

    id: str = Field(..., pattern=IDENTITY_ID)
    name: str | None
    state: IdentityStateName
    reason: str | None = Field(..., description="why the job failed (failed only)")
    stage: Literal["training", "generating", "filtering"] | None
    progress: float = Field(..., ge=0, le=1)
    counts: Counts
    options: JobOptions
    created: float
    updated: float
    attempts: int = Field(..., ge=0, description="workers that started this job (a restart adds one)")
    history: list[HistoryEntry]
    status_url: str


class IdentityIndex(BaseModel):
    identities: list[str] = Field(..., description="every stored identity id")
    queued: list[str] = Field(..., description="ids queued or running, oldest first")


class ImageInfo(BaseModel):
    """One generated image of a finished job (a row of its manifest)."""

    file: str = Field(..., pattern=DATASET_FILE)
    kept: bool
    score_reid_ctf: float | None = score_field()
    score_reid_ctf_margin: float | None = Field(None, description="Re-ID CTF: own minus best rival similarity")
    score_cctf: float | None = score_field()
    score_clip: float | None = score_field()
    prompt: str | None = None
    seed: int | None = None
    index: int | None = None
    adapter: str | None = None
    scheduler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    url: str = Field(..., description="GET it for the image file")


class ImageList(BaseModel):
    id: str = Field(..., pattern=IDENTITY_ID)
    images: list[ImageInfo]


class GenerateRequest(BaseModel):
    num_images: int = Field(4, ge=1, description="images to draw (at most limits.max_generate_images)")
    include_dropped: bool = Field(False, description="also return images the deciding filter dropped")


class GeneratedImage(BaseModel):
    index: int = Field(..., ge=0, description="sample index of the identity, never repeated")
    seed: int
    prompt: str
    kept: bool
    score: float = Field(..., ge=0, le=1, description="the deciding filter's score (build.filter.decide_by)")
    score_reid_ctf: float | None = score_field()
    score_reid_ctf_margin: float | None = Field(None, description="Re-ID CTF: own minus best rival similarity")
    score_cctf: float | None = score_field()
    score_clip: float | None = score_field()
    png_base64: str


class AdapterInfo(BaseModel):
    """How the generator replica served the request (the adapter LRU and request batching)."""

    loaded_now: bool
    loads: int = Field(..., ge=0)
    evictions: int = Field(..., ge=0)
    resident: list[str]
    batched_requests: int = Field(..., ge=1)
    replica_pid: int


class GenerateResult(BaseModel):
    id: str = Field(..., pattern=IDENTITY_ID)
    images: list[GeneratedImage]
    kept: int = Field(..., ge=0)
    dropped: int = Field(..., ge=0)
    adapter: AdapterInfo
