"""The augmentation service as a Ray Serve application: upload crops of a new person, get back filtered
identity-consistent synthetic images.

Three deployments, composed with ``.bind()`` by the typed builder :func:`build_app`:

* ``Ingress`` — FastAPI routes (OpenAPI at /docs): checks every request, reads and writes the store;
* ``Worker`` — one replica running queued jobs (caption -> reference set -> adapter -> sample -> filter) in a
  background thread; a restarted replica picks the store's queue up again;
* ``Generator`` — ``POST /generate``: adapters kept resident with ``@serve.multiplexed`` (LRU, capacity
  ``adapter_cache``) and requests sharing an adapter merged with ``@serve.batch``.

    serve run serve_apps.app:build_app config=my-settings.yaml      # or: diffreid serve --config FILE
    serve deploy serve_apps/config.yaml
"""

import asyncio
import hmac
import os
import threading
from collections import defaultdict
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from ray import serve

from diffreid.distributed.loopback import bind_serve_replicas_to_loopback
from diffreid.errors import DiffreidError
from serve_apps.service import (JobRunner, Registry, ServiceError, Store, build_archive, check_id,
                                create_identity, list_images, public_state, read_image)
from serve_apps.settings import JobOptions, ServeSettings

bind_serve_replicas_to_loopback()  # replicas import this module before their gRPC server starts

API = "/v1/identities"
OPEN_PATHS = {"/healthz"}
DOC_PATHS = {"/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}

app = FastAPI(title="diffreid augmentation service", version="1",
              description="Upload a few crops of a new person; the service trains an identity adapter and returns "
                          "filtered, identity-consistent synthetic images (Diffusion-ReID).")


class GenerateRequest(BaseModel):
    num_images: int = Field(4, ge=1, description="images to draw (at most limits.max_generate_images)")
    include_dropped: bool = Field(False, description="also return images the Re-ID filter dropped")


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

    async def guard(self, request: Request, call_next):
        """Bearer token (constant-time) on every route but /healthz, then the request-size limit, both before
        the body is read."""
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

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.post(API, status_code=202)
    async def create(self, request: Request,
                     images: list[UploadFile] = File([], description="crops of one person (JPEG/PNG)"),
                     name: str | None = Form(None, description="a label for this identity"),
                     num_images: int | None = Form(None, ge=1), adapter_mode: Literal["lora", "dreambooth"] | None =
                     Form(None), steps: int | None = Form(None, ge=1), seed: int | None = Form(None, ge=0),
                     threshold: float | None = Form(None, ge=0, le=1)) -> JSONResponse:
        """Queue a new identity: caption -> reference set -> adapter -> sample -> filter run off the request path."""
        files = [(f.filename or "", await f.read()) for f in images]
        options = JobOptions(num_images=num_images, adapter_mode=adapter_mode, steps=steps, seed=seed,
                             threshold=threshold)
        async with self.create_lock:
            state = await asyncio.to_thread(create_identity, self.settings, self.registry, name, options, files)
        self.worker.wake.remote()
        body = public_state(state, str(request.base_url).rstrip("/"))
        return JSONResponse(body, status_code=202, headers={"Location": body["status_url"]})

    @app.get(API)
    async def index(self) -> dict:
        ids = await asyncio.to_thread(self.registry.identities)
        return {"identities": ids, "queued": await asyncio.to_thread(self.registry.queue)}

    @app.get(API + "/{ident}")
    async def status(self, ident: str, request: Request) -> dict:
        state = await asyncio.to_thread(self.registry.state, check_id(ident))
        return public_state(state, str(request.base_url).rstrip("/"))

    @app.get(API + "/{ident}/images")
    async def images(self, ident: str, include_dropped: bool = Query(False)) -> dict:
        items = await asyncio.to_thread(list_images, self.registry, check_id(ident), include_dropped)
        return {"id": ident, "images": items}

    @app.get(API + "/{ident}/files/{rel:path}")
    async def file(self, ident: str, rel: str) -> Response:
        data = await asyncio.to_thread(read_image, self.registry, check_id(ident), rel)
        return Response(data, media_type="image/png" if rel.endswith(".png") else "image/jpeg")

    @app.get(API + "/{ident}/archive")
    async def archive(self, ident: str, include_dropped: bool = Query(False)) -> Response:
        data = await asyncio.to_thread(build_archive, self.registry, check_id(ident), include_dropped)
        return Response(data, media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{ident}.zip"'})

    @app.post(API + "/{ident}/generate")
    async def generate(self, ident: str, body: GenerateRequest | None = None) -> dict:
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

    @app.delete(API + "/{ident}", status_code=204)
    async def delete(self, ident: str) -> Response:
        await asyncio.to_thread(self.registry.delete, check_id(ident))
        return Response(status_code=204)


@serve.deployment(name="Worker", num_replicas=1, ray_actor_options={"num_cpus": 1})
class Worker:
    """Runs queued jobs one at a time in a thread; state lives in the store, so a new replica resumes."""

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
            self.runner = JobRunner(self.settings)
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
            from serve_apps.service import IdentitySampler

            self.settings = ServeSettings.model_validate(settings)
            set_threads(self.settings)
            self.sampler = IdentitySampler(self.settings)

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
    from serve_apps.service import prepare_assets

    settings = load_settings(args)
    prepare_assets(settings, progress=True)  # once here, so replicas start from finished assets
    data = settings.model_dump(mode="json")
    worker = Worker.bind(data)
    generator = generator_deployment(settings).bind(data)
    return Ingress.bind(worker, generator, data)
