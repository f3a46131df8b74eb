"""The image-to-3D HTTP application: the FastAPI ingress, the application builder, and `vf3d serve`.

Routes (architecture.md): `POST /v1/image-to-3d` → mesh bytes, `POST /v1/turntable` → MP4,
`GET /healthz`, and the web page at `/` (static files shipped in the package, no CDN). Bad input
gets `{"error": "..."}` with a 4xx status; a model replica that is down gets 503, a request over
`request_timeout_s` gets 504 — never a bare 500 with a traceback.
"""

# No `from __future__ import annotations`: FastAPI reads the route methods' annotations (Request,
# query types) at runtime, and Serve's ingress wrapper loses the module globals to resolve strings.

import asyncio
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from vf3d.config import ServeConfig, from_dict, to_dict
from vf3d.serving.deployments import MeshBuilder, ReconstructorModel
from vf3d.serving.http import MeshRequest, RequestError, TriplaneCache, check_api_key, decode_image, image_bytes, image_key

logger = logging.getLogger("ray.serve")

STATIC_DIR = Path(__file__).parent / "static"
API_KEY_ENV = "VF3D_API_KEY"
"""Environment variable holding the API key; requests need `Authorization: Bearer <key>` when set.
Read by each ingress replica from its own environment (a secret never travels in Serve's config)."""
HEALTH_TIMEOUT_S = 10.0

api = FastAPI(title="vf3d image-to-3D", description="One image in, a vertex-coloured mesh (or a turntable video) out.", docs_url="/docs", redoc_url=None)


# The page's script and styles (a missing file is a 404, not a failure to start).
api.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@api.exception_handler(RequestError)
async def _request_error(request: Request, error: RequestError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return _error(error.status, error.message, headers)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    # FastAPI's default is {"detail": [...]}; the contract is one readable line under "error".
    problems = [f"{'.'.join(str(part) for part in item['loc'][1:]) or item['loc'][0]}: {item['msg']}" for item in error.errors()]
    return _error(422, "; ".join(problems))


@api.exception_handler(Exception)
async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    # A bug, not the client's fault: logged with its traceback, answered in the same JSON shape.
    logger.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=error)
    return _error(500, f"internal error ({type(error).__name__}); see the server log")


def _is_replica_failure(error: BaseException) -> bool:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    return isinstance(error, (RayActorError, ActorDiedError, ActorUnavailableError, BackPressureError, DeploymentUnavailableError))


@serve.deployment
@serve.ingress(api)
class Ingress:
    """HTTP in, bytes out: everything request-shaped happens here, on CPU replicas."""

    def __init__(self, model, mesher, config: dict, image_size: int) -> None:
        import torch

        # The ingress decodes and preprocesses on its own reserved CPUs; one torch thread per
        # concurrent request keeps them from oversubscribing the replica.
        torch.set_num_threads(1)
        self.model = model
        self.mesher = mesher
        self.config: ServeConfig = from_dict(ServeConfig, config).validate()
        self.image_size = image_size
        self.api_key = os.environ.get(API_KEY_ENV) or None
        self.cache = TriplaneCache(self.config.triplane_cache_entries)
        self._pending: dict[str, asyncio.Future] = {}

    async def _with_timeout(self, awaitable, started: float):
        remaining = self.config.request_timeout_s - (time.monotonic() - started)
        try:
            return await asyncio.wait_for(awaitable, timeout=max(remaining, 0.001))
        except asyncio.TimeoutError:
            raise RequestError(504, f"request took longer than request_timeout_s={self.config.request_timeout_s:g}") from None
        except RequestError:
            raise
        except Exception as error:
            if _is_replica_failure(error):
                logger.warning("model call failed: %s", error)
                raise RequestError(503, f"a model replica is unavailable ({type(error).__name__}); retry shortly") from None
            raise

    async def _triplanes(self, request: Request, started: float) -> tuple[Any, bool]:
        """Auth, body, decode, then the triplanes of the image: cached or from the model."""
        check_api_key(request.headers.get("authorization"), self.api_key)
        data = await image_bytes(request, self.config.max_body_bytes)
        key = image_key(data, self.config.inference)
        planes = self.cache.get(key)
        if planes is not None:
            return planes, True
        # The same image arriving twice at once is encoded once.
        if key in self._pending:
            return await asyncio.shield(self._pending[key]), True
        future = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            image = await asyncio.to_thread(decode_image, data, self.image_size, self.config.inference, self.config.max_pixels, self.config.min_image_side)
            planes = await self._with_timeout(self.model.encode.remote(image), started)
            self.cache.put(key, planes)
            future.set_result(planes)
            return planes, False
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # mark retrieved: waiters (if any) re-raise it themselves
            raise
        finally:
            del self._pending[key]

    @api.get("/", include_in_schema=False)
    async def index(self):
        """The upload-and-view page."""
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            return _error(404, "the web page is not installed (vf3d/serving/static/index.html is missing)")
        return FileResponse(page, media_type="text/html")

    @api.get("/healthz")
    async def healthz(self):
        """200 with the model replica's figures when a forward pass works; 503 otherwise."""
        try:
            info = await asyncio.wait_for(self.model.info.remote(), timeout=HEALTH_TIMEOUT_S)
        except Exception as error:  # any failure to reach the model means "not healthy"
            return _error(503, f"model unavailable: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".strip())
        info.update(status="ok", cache_entries=len(self.cache), cache_hits=self.cache.hits, cache_misses=self.cache.misses, api_key_required=self.api_key is not None)
        return info

    @api.post("/v1/image-to-3d")
    async def image_to_3d(self, request: Request, format: str = "glb", mesh_resolution: int | None = None, seed: int | None = None):
        """Image bytes (raw body or multipart field `image`) → mesh bytes (`format`: glb, obj or ply)."""
        from vf3d.mesh import MESH_CONTENT_TYPES

        started = time.monotonic()
        params = MeshRequest.from_query(format, mesh_resolution, seed, self.config.max_mesh_resolution)
        planes, cached = await self._triplanes(request, started)
        result = await self._with_timeout(self.mesher.mesh.remote(planes, params.format, params.mesh_resolution), started)
        if "error" in result:
            raise RequestError(422, result["error"])
        headers = {
            "X-VF3D-Triplane-Cache": "hit" if cached else "miss",
            "X-VF3D-Vertices": str(result["vertices"]),
            "X-VF3D-Faces": str(result["faces"]),
            "X-VF3D-Seconds": f"{time.monotonic() - started:.3f}",
            "Content-Disposition": f'attachment; filename="result.{params.format}"',
        }
        return Response(result["data"], media_type=MESH_CONTENT_TYPES[params.format], headers=headers)

    @api.post("/v1/turntable")
    async def turntable(self, request: Request, seed: int | None = None):
        """Image bytes → an MP4 of the reconstruction turning one full revolution."""
        started = time.monotonic()
        params = MeshRequest.from_query("glb", None, seed, self.config.max_mesh_resolution)
        planes, cached = await self._triplanes(request, started)
        frames = await self._with_timeout(self.model.turntable.remote(planes, params.seed), started)
        video = await self._with_timeout(self.mesher.video.remote(frames), started)
        headers = {"X-VF3D-Triplane-Cache": "hit" if cached else "miss", "X-VF3D-Seconds": f"{time.monotonic() - started:.3f}", "Content-Disposition": 'attachment; filename="turntable.mp4"'}
        return Response(video, media_type="video/mp4", headers=headers)


def _deployment_options(replicas) -> dict:
    return {
        "autoscaling_config": {
            "min_replicas": replicas.min_replicas,
            "max_replicas": replicas.max_replicas,
            "initial_replicas": replicas.initial_replicas,
            "target_ongoing_requests": replicas.target_ongoing_requests,
        },
        "max_ongoing_requests": replicas.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": replicas.num_cpus, "num_gpus": replicas.num_gpus},
    }


def build_application(model_dir: str | os.PathLike, config: ServeConfig) -> serve.Application:
    """The endpoint for a reconstructor directory, its deployments sized by `config`.

    The model directory is checked here (config.json readable) so a wrong path fails at build
    time with one line, not later inside a replica. Paths are made absolute: replicas run in
    other working directories (on a cluster, the directory must exist on every node).
    """
    from vf3d.models.reconstructor import Reconstructor

    config = config.validate()
    model_dir = Path(model_dir).expanduser().resolve()
    model_config = Reconstructor.load_config(model_dir)
    settings = to_dict(config)
    model = ReconstructorModel.options(
        **_deployment_options(config.model),
        health_check_period_s=config.health_check_period_s,
        health_check_timeout_s=config.health_check_timeout_s,
    ).bind(str(model_dir), settings)
    mesher = MeshBuilder.options(**_deployment_options(config.mesh)).bind(str(model_dir), settings)
    return Ingress.options(**_deployment_options(config.ingress)).bind(model, mesher, settings, model_config.encoder.image_size)


class ServeAppArgs(BaseModel):
    """Arguments of the application builder (`args:` in serve/config.yaml), validated by Serve."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="reconstructor directory (config.json + model.safetensors), on every node")
    preset: str = Field("debug", description="ServeConfig preset: debug, base or vfusion3d")
    config: str | None = Field(None, description="YAML/JSON file of ServeConfig overrides")
    overrides: dict[str, Any] = Field(default_factory=dict, description="ServeConfig overrides inline (applied after `config`)")


def resolve_app_config(args: ServeAppArgs) -> ServeConfig:
    """Preset, then the overrides file, then the inline overrides; validated."""
    from vf3d import config as config_lib

    config = config_lib.resolve(config_lib.SERVE_PRESETS, args.preset, args.config)
    if args.overrides:
        config = config_lib.merge(config, args.overrides)
    return config.validate()


def app_from_args(args: ServeAppArgs | dict) -> serve.Application:
    """What serve/app.py's builder does: typed args → the application."""
    if not isinstance(args, ServeAppArgs):
        args = ServeAppArgs.model_validate(args)
    return build_application(args.model, resolve_app_config(args))


def start_endpoint(application: serve.Application, config: ServeConfig, log=print) -> str:
    """Start Serve's HTTP proxy on the connected cluster, deploy `application` at `/`, wait until
    every replica is up, and return the base URL."""
    import ray

    serve.start(http_options={"host": config.host, "port": config.port, "request_timeout_s": config.request_timeout_s})
    started = time.perf_counter()
    serve.run(application, name="vf3d", route_prefix="/")
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    url = f"http://{host}:{config.port}"
    log(f"ready in {time.perf_counter() - started:.1f}s: {url}/ "
        f"(POST /v1/image-to-3d, POST /v1/turntable, GET /healthz; API key {'required' if os.environ.get(API_KEY_ENV) else 'off'}); "
        f"Ray at {ray.get_runtime_context().gcs_address}")
    return url


def run_endpoint(application: serve.Application, config: ServeConfig, log=print) -> None:
    """`start_endpoint`, then block until SIGINT/SIGTERM and shut Serve down."""
    start_endpoint(application, config, log=log)
    log("Ctrl-C stops the endpoint")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    log("stopping the endpoint")
    serve.shutdown()
