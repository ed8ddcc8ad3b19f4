"""The augmentation service as a Ray Serve application: upload crops of a new person, get back filtered
identity-consistent synthetic images.

Three deployments, composed with ``.bind()`` by the typed builder :func:`build_app`:

* ``Ingress`` — FastAPI routes typed by ``schemas.py`` (OpenAPI at /docs): checks every request, reads and
  writes the store (``store.py``, ``uploads.py``, ``results.py``); ``GET /`` is a web page over the same API
  (``static/index.html``);
* ``Worker`` — replicas (``worker_replicas``, 2) running queued jobs (caption -> reference set -> adapter ->
  sample -> filter) in a background thread, each job under a lease in the store; a replica that dies loses its
  lease and another one takes the job over;
* ``Generator`` — ``POST /generate`` (``sampler.py``): adapters kept resident with ``@serve.multiplexed`` (LRU,
  capacity ``adapter_cache``) and requests sharing an adapter merged with ``@serve.batch``.

    serve run serve_apps.app:build_app config=my-settings.yaml      # or: diffreid serve --config FILE
    serve deploy serve_apps/config.yaml
"""

import asyncio
import hmac
import os
import threading
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, File, Form, Path as PathParam, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from ray import serve

from diffreid.distributed.loopback import bind_serve_replicas_to_loopback
from diffreid.errors import DiffreidError
from serve_apps.metrics import ServiceMetrics
from serve_apps.results import build_archive, list_images, public_state, read_image
from serve_apps.schemas import (API, API_VERSION, DATASET_FILE, IDENTITY_ID, ErrorBody, GenerateRequest,
                                GenerateResult, Health, IdentityIndex, IdentityState, ImageList)
from serve_apps.settings import JobOptions, ServeSettings
from serve_apps.store import Registry, ServiceError, Store, check_id
from serve_apps.uploads import create_identity
from serve_apps.worker import JobRunner

bind_serve_replicas_to_loopback()  # replicas import this module before their gRPC server starts

OPEN_PATHS = {"/", "/healthz"}  # the page holds no data: it asks for the token and sends it on each call
DOC_PATHS = {"/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}

PAGE = (Path(__file__).parent / "static" / "index.html").read_text()
PAGE_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' blob: data:; connect-src 'self' blob:; frame-ancestors 'none'")

app = FastAPI(title="diffreid augmentation service", version=API_VERSION,
              description="Upload a few crops of a new person; the service trains an identity adapter and returns "
                          "filtered, identity-consistent synthetic images (Diffusion-ReID).")


ERRORS = {400: "malformed identity id or file name", 401: "missing or wrong bearer token",
          404: "no such identity (never created, or deleted) or file", 409: "the identity's job is not done",
          411: "Content-Length header missing", 413: "a size limit (the detail names it)",
          415: "not an allowed image format (checked by decoding)", 422: "a field or limit (the detail names it)",
          429: "too many jobs queued or running; retry after the Retry-After header's seconds",
          "default": "any other error, e.g. 500: a bug (the detail says which)"}
IdentityId = Annotated[str, PathParam(pattern=IDENTITY_ID, description="32 lowercase hex characters")]
IncludeDropped = Annotated[bool, Query(description="also the images the deciding filter dropped")]


def document_limits(schema: dict, limits) -> dict:
    """The configured limits as maxima of the request bodies in the OpenAPI document, so a client (or a fuzzer)
    generating requests from it stays within what the service accepts."""
    bodies = {"GenerateRequest": {"num_images": limits.max_generate_images},
              "Body_create": {"num_images": limits.max_num_images, "steps": limits.max_adapter_steps}}
    for name, model in schema.get("components", {}).get("schemas", {}).items():
        bounds = next((b for prefix, b in bodies.items() if name.startswith(prefix)), {})
        for field, maximum in bounds.items():
            prop = model.get("properties", {}).get(field)
            if prop is not None:  # an optional form field is anyOf [integer, null]
                next((alt for alt in prop.get("anyOf", []) if alt.get("type") == "integer"), prop)["maximum"] = maximum
    return schema


def errors(*codes: int) -> dict:
    """OpenAPI responses of a route: each error status it answers with, and any other, with the one error body."""
    return {code: {"model": ErrorBody, "description": ERRORS[code]} for code in (*codes, 401, "default")}


def binary(media_types: tuple[str, ...], description: str) -> dict:
    return {200: {"description": description, "content": {m: {"schema": {"type": "string", "format": "binary"}}
                                                           for m in media_types}}}


def set_threads(settings: ServeSettings) -> None:
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)


def error_response(err: ServiceError) -> JSONResponse:
    return JSONResponse({"detail": err.detail}, status_code=err.status, headers=err.headers)


@app.exception_handler(DiffreidError)
async def _user_error(request: Request, err: DiffreidError):
    if isinstance(err, ServiceError):
        return error_response(err)
    return JSONResponse({"detail": str(err)[:2000]}, status_code=err.status)


@app.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, err: RequestValidationError):
    """Every invalid field as one line; a malformed path parameter (id, file name) is a 400 as it always was."""
    problems = err.errors()
    status = 400 if any(p["loc"][:1] == ("path",) for p in problems) else 422
    detail = "; ".join(f"{'.'.join(str(x) for x in p['loc'])}: {p['msg']}"
                       + (f" (got {str(p['input'])[:80]!r})" if p["loc"][:1] == ("path",) else "")
                       for p in problems)
    return JSONResponse({"detail": detail[:2000]}, status_code=status)


@app.exception_handler(Exception)
async def _unexpected(request: Request, err: Exception):
    return JSONResponse({"detail": f"internal error: {type(err).__name__}: {str(err)[:500]}"}, status_code=500)


@app.middleware("http")
async def _guard(request: Request, call_next):
    return await request.app.state.ingress.guard(request, call_next)


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0.25})
@serve.ingress(app)
class Ingress:
    def __init__(self, worker, generator, settings: dict):
        self.settings = ServeSettings.model_validate(settings)
        self.registry = Registry(Store(self.settings.storage, self.settings.scratch_dir))
        self.worker, self.generator = worker, generator
        self.token = self.settings.resolved_token()
        self.create_lock = asyncio.Lock()  # queue-limit check and enqueue happen together in this replica
        app.state.ingress = self
        app.openapi_schema = document_limits(FastAPI.openapi(app), self.settings.limits)

    async def guard(self, request: Request, call_next):
        """Bearer token (constant-time) on every route but OPEN_PATHS (the page, /healthz), then the
        request-size limit, both before the body is read."""
        path = request.url.path
        open_path = path in OPEN_PATHS or (self.settings.public_docs and path in DOC_PATHS)
        if self.token and not open_path:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
                return JSONResponse({"detail": "missing or wrong bearer token (header 'Authorization: Bearer …')"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None:
                return JSONResponse({"detail": "Content-Length header required"}, status_code=411)
            limit = self.settings.limits.max_request_bytes
            if not length.isdigit() or int(length) > limit + 64 * 1024:  # multipart framing on top of the files
                return JSONResponse({"detail": f"request body of {length} bytes > limits.max_request_bytes {limit}"},
                                    status_code=413)
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        """Upload crops, watch the job, see kept/dropped images with scores, generate more, download, delete."""
        return HTMLResponse(PAGE, headers={"Content-Security-Policy": PAGE_CSP})

    @app.get("/healthz", response_model=Health)
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.post(API, status_code=202, response_model=IdentityState, responses={
        202: {"description": "queued", "headers": {"Location": {"description": "the identity's status URL",
                                                                "schema": {"type": "string"}}}},
        **errors(411, 413, 415, 422, 429)})
    async def create(self, request: Request, response: Response,
                     images: list[UploadFile] = File([], description="crops of one person (JPEG/PNG)"),
                     name: str | None = Form(None, description="a label for this identity"),
                     num_images: int | None = Form(None, ge=1), adapter_mode: Literal["lora", "dreambooth"] | None =
                     Form(None), steps: int | None = Form(None, ge=1), seed: int | None = Form(None, ge=0),
                     threshold: float | None = Form(None, ge=0, le=1)) -> dict:
        """Queue a new identity: caption -> reference set -> adapter -> sample -> filter run off the request path."""
        files = [(f.filename or "", await f.read()) for f in images]
        options = JobOptions(num_images=num_images, adapter_mode=adapter_mode, steps=steps, seed=seed,
                             threshold=threshold)
        async with self.create_lock:
            state = await asyncio.to_thread(create_identity, self.settings, self.registry, name, options, files)
        self.worker.wake.remote()
        body = public_state(state, str(request.base_url).rstrip("/"))
        response.headers["Location"] = body["status_url"]
        return body

    @app.get(API, response_model=IdentityIndex, responses=errors())
    async def index(self) -> dict:
        ids = await asyncio.to_thread(self.registry.identities)
        return {"identities": ids, "queued": await asyncio.to_thread(self.registry.queue)}

    @app.get(API + "/{ident}", response_model=IdentityState, responses=errors(400, 404))
    async def status(self, ident: IdentityId, request: Request) -> dict:
        state = await asyncio.to_thread(self.registry.state, check_id(ident))
        return public_state(state, str(request.base_url).rstrip("/"))

    @app.get(API + "/{ident}/images", response_model=ImageList, responses=errors(400, 404, 409, 422))
    async def images(self, ident: IdentityId, include_dropped: IncludeDropped = False) -> dict:
        items = await asyncio.to_thread(list_images, self.registry, check_id(ident), include_dropped)
        return {"id": ident, "images": items}

    @app.get(API + "/{ident}/files/{rel:path}", response_class=Response,
             responses={**binary(("image/png", "image/jpeg"), "one image of the identity's dataset"),
                        **errors(400, 404, 409)})
    async def file(self, ident: IdentityId,
                   rel: Annotated[str, PathParam(pattern=DATASET_FILE, description="a `file` of /images")]) -> Response:
        data = await asyncio.to_thread(read_image, self.registry, check_id(ident), rel)
        return Response(data, media_type="image/png" if rel.endswith(".png") else "image/jpeg")

    @app.get(API + "/{ident}/archive", response_class=Response,
             responses={**binary(("application/zip",), "Market-layout images + manifest files"),
                        **errors(400, 404, 409, 422)})
    async def archive(self, ident: IdentityId, include_dropped: IncludeDropped = False) -> Response:
        data = await asyncio.to_thread(build_archive, self.registry, check_id(ident), include_dropped)
        return Response(data, media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{ident}.zip"'})

    @app.post(API + "/{ident}/generate", response_model=GenerateResult,
              responses=errors(400, 404, 409, 411, 413, 422))
    async def generate(self, ident: IdentityId, body: GenerateRequest | None = None) -> dict:
        """More images from the identity's adapter (kept resident by the generator replicas)."""
        body = body or GenerateRequest()
        limit = self.settings.limits.max_generate_images
        if body.num_images > limit:
            raise ServiceError(422, f"num_images {body.num_images} > limits.max_generate_images {limit}")
        state = await asyncio.to_thread(self.registry.state, check_id(ident))
        if state["state"] != "done":
            raise ServiceError(409, f"identity {ident} is {state['state']}; /generate needs a finished identity")
        result = await self.generator.options(multiplexed_model_id=ident).generate.remote(
            ident, body.num_images, body.include_dropped)
        if "error" in result:
            raise ServiceError(result["error"]["status"], result["error"]["detail"])
        return {"id": ident, **result}

    @app.delete(API + "/{ident}", status_code=204, response_class=Response, responses=errors(400, 404))
    async def delete(self, ident: IdentityId) -> Response:
        await asyncio.to_thread(self.registry.delete, check_id(ident))
        return Response(status_code=204)


@serve.deployment(name="Worker", ray_actor_options={"num_cpus": 1})
class Worker:
    """Runs queued jobs one at a time in a thread; state and job leases live in the store, so several replicas
    share the queue without running a job twice, and a replacement replica resumes."""

    def __init__(self, settings: dict):
        self.settings = ServeSettings.model_validate(settings)
        set_threads(self.settings)
        self.stop = threading.Event()
        self.runner: JobRunner | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="diffreid-jobs", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        try:
            runner = JobRunner(self.settings)
            metrics = ServiceMetrics("Worker")
            runner.on_event = lambda event, state: (metrics.queue_length(state["length"]) if event == "queue"
                                                    else metrics.job(event, state))
            self.runner = runner
            self.runner.serve_forever(self.stop)
        except BaseException as err:  # surfaced by check_health, so Serve replaces the replica
            self.error = err

    def wake(self) -> None:
        if self.runner is not None:
            self.runner.wake.set()

    def info(self) -> dict:
        return {"pid": os.getpid(), "ready": self.runner is not None}

    def check_health(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"job worker stopped: {self.error!r}")

    def __del__(self) -> None:
        self.stop.set()


def generator_deployment(settings: ServeSettings):
    """The Generator deployment; its LRU capacity and batch size come from ``settings``."""

    @serve.deployment(name="Generator", ray_actor_options={"num_cpus": 1})
    class Generator:
        def __init__(self, settings: dict):
            from serve_apps.sampler import IdentitySampler

            self.settings = ServeSettings.model_validate(settings)
            set_threads(self.settings)
            self.sampler = IdentitySampler(self.settings)
            self.metrics, self.seen = ServiceMetrics("Generator"), {"loads": 0, "evictions": 0}

        @serve.multiplexed(max_num_models_per_replica=settings.adapter_cache)
        async def get_adapter(self, ident: str):
            return await asyncio.to_thread(self.sampler.load, ident)

        @serve.batch(max_batch_size=settings.generate_batch_size, batch_wait_timeout_s=settings.generate_batch_wait_s)
        async def _batched(self, requests: list[tuple[str, int, bool]]) -> list[dict]:
            groups: dict[str, list[int]] = defaultdict(list)
            for i, (ident, _, _) in enumerate(requests):
                groups[ident].append(i)
            out: list[dict] = [{} for _ in requests]
            for ident, rows in groups.items():
                loads = self.sampler.loads[ident]
                try:
                    resident = await self.get_adapter(ident)
                    results = await asyncio.to_thread(self.sampler.sample, resident,
                                                      [requests[i][1:] for i in rows])
                except ServiceError as err:
                    results = [{"error": {"status": err.status, "detail": err.detail}}] * len(rows)
                adapter = {"loaded_now": self.sampler.loads[ident] > loads, "loads": self.sampler.loads[ident],
                           "evictions": self.sampler.evictions, "resident": self.sampler.resident(),
                           "batched_requests": len(rows), "replica_pid": os.getpid()}
                for i, result in zip(rows, results):
                    out[i] = {**result, "adapter": adapter}
            loads, evictions = sum(self.sampler.loads.values()), self.sampler.evictions
            self.metrics.adapter("load", loads - self.seen["loads"])
            self.metrics.adapter("eviction", evictions - self.seen["evictions"])
            self.seen = {"loads": loads, "evictions": evictions}
            return out

        async def generate(self, ident: str, num_images: int, include_dropped: bool) -> dict:
            return await self._batched((ident, num_images, include_dropped))

    return Generator


# ----------------------------------------------------------------------------------------------------------
# the typed application builder
# ----------------------------------------------------------------------------------------------------------
class AppArgs(BaseModel):
    config: str | None = Field(None, description="ServeSettings YAML; none = the tiny toy setup")
    settings: dict | None = Field(None, description="ServeSettings fields inline (used instead of config)")
    overrides: list[str] = Field(default_factory=list, description="key.sub=value overrides")


def load_settings(args: AppArgs) -> ServeSettings:
    """Settings from the args, with local paths made absolute (replicas do not share the driver's cwd)."""
    if args.settings is not None:
        settings = ServeSettings.load(None, args.overrides, **args.settings)
    else:
        settings = ServeSettings.load(args.config, args.overrides)
    fields = {"assets_dir": str(Path(settings.assets_dir).expanduser().resolve())}
    if "://" not in settings.storage:
        fields["storage"] = str(Path(settings.storage).expanduser().resolve())
    if settings.scratch_dir:
        fields["scratch_dir"] = str(Path(settings.scratch_dir).expanduser().resolve())
    return settings.model_copy(update=fields)


def build_app(args: AppArgs) -> serve.Application:
    from serve_apps.worker import prepare_assets

    settings = load_settings(args)
    prepare_assets(settings, progress=True)  # once here, so replicas start from finished assets
    data = settings.model_dump(mode="json")
    worker = Worker.options(num_replicas=settings.worker_replicas).bind(data)
    generator = generator_deployment(settings).bind(data)
    return Ingress.bind(worker, generator, data)
