"""The image-to-3D HTTP application: the FastAPI ingress, the application builder, and `vf3d serve`.

Routes: `POST /v1/image-to-3d` → mesh bytes, `POST /v1/turntable` → MP4,
`GET /healthz`, and the web page at `/` (static files shipped in the package, no CDN). Bad input
gets `{"error": "..."}` with a 4xx status; a model replica that is down gets 503, a request over
`request_timeout_s` gets 504 — never a bare 500 with a traceback.
"""

# No `from __future__ import annotations`: FastAPI reads the route methods' annotations (Request,
# query types) at runtime, and Serve's ingress wrapper loses the module globals to resolve strings.

import asyncio
import contextlib
import errno
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
from starlette.exceptions import HTTPException as StarletteHTTPException

from vf3d import storage
from vf3d.config import from_dict, to_dict
from vf3d.serving.config import ServeConfig
from vf3d.serving.deployments import MeshBuilder, ReconstructorModel
from vf3d.serving.http import MeshRequest, RequestError, TriplaneCache, check_api_key, check_headers, decode_image, image_bytes, image_key

logger = logging.getLogger("ray.serve")

STATIC_DIR = Path(__file__).parent / "static"
API_KEY_ENV = "VF3D_API_KEY"
"""Environment variable holding the API key; requests need `Authorization: Bearer <key>` when set.
Read by each ingress replica from its own environment (a secret never travels in Serve's config)."""
HEALTH_TIMEOUT_S = 10.0

# FastAPI's own docs routes are off: its docs page loads its script from a CDN. The ingress
# serves /docs and /openapi.json itself when the config's `api_docs` is on.
api = FastAPI(
    title="vf3d image-to-3D",
    description="One image in, a vertex-coloured mesh (or a turntable video) out.",
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


# The page's script and styles (a missing file is a 404, not a failure to start).
api.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@api.exception_handler(RequestError)
async def _request_error(request: Request, error: RequestError) -> JSONResponse:
    headers = dict(error.headers)
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return _error(error.status, error.message, headers or None)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    # Unknown paths and wrong methods: the same {"error"} shape as every other refusal.
    return _error(error.status_code, f"{request.method} {request.url.path}: {error.detail}", getattr(error, "headers", None))


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


def _is_backpressure(error: BaseException) -> bool:
    from ray.serve.exceptions import BackPressureError

    return isinstance(error, BackPressureError)


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
        # Decoding is the ingress's memory peak (up to ~16 bytes per pixel of max_pixels each):
        # at most max_concurrent_decodes at once, whatever the number of uploads in flight.
        self._decode_slots = asyncio.Semaphore(self.config.max_concurrent_decodes)
        self._inflight = 0
        self.shed = 0
        self._last_info: dict | None = None

    def _retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(self.config.retry_after_s)}

    async def _with_timeout(self, awaitable, started: float, what: str = "model"):
        remaining = self.config.request_timeout_s - (time.monotonic() - started)
        try:
            return await asyncio.wait_for(awaitable, timeout=max(remaining, 0.001))
        except asyncio.TimeoutError:
            raise RequestError(504, f"request took longer than request_timeout_s={self.config.request_timeout_s:g}") from None
        except RequestError:
            raise
        except Exception as error:
            if _is_backpressure(error):
                # Serve refused the call: the deployment's queue is at max_queued_requests.
                self.shed += 1
                raise RequestError(
                    503, f"the {what} is overloaded (its queue is full); retry after {self.config.retry_after_s} s", self._retry_after()
                ) from None
            if _is_replica_failure(error):
                logger.warning("%s call failed: %s", what, error)
                raise RequestError(
                    503, f"a {what} replica is unavailable ({type(error).__name__}); retry shortly", self._retry_after()
                ) from None
            raise

    def _check_headers(self, request: Request) -> None:
        check_headers(request.scope["headers"], self.config.max_header_count, self.config.max_header_bytes)

    @contextlib.contextmanager
    def _admitted(self, request: Request):
        """Header limits, then load shedding: at most max_inflight_requests image requests here."""
        self._check_headers(request)
        if self._inflight >= self.config.max_inflight_requests:
            self.shed += 1
            raise RequestError(
                503,
                f"the endpoint is busy ({self._inflight} image requests in progress on this replica); retry after {self.config.retry_after_s} s",
                self._retry_after(),
            )
        self._inflight += 1
        try:
            yield
        finally:
            self._inflight -= 1

    async def _decode(self, data: bytes):
        async with self._decode_slots:
            return await asyncio.to_thread(
                decode_image, data, self.image_size, self.config.inference, self.config.max_pixels, self.config.min_image_side
            )

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
            # Shielded: a client that disconnects mid-decode must not free the decode slot while
            # its thread still holds the decoded pixels.
            image = await asyncio.shield(asyncio.ensure_future(self._decode(data)))
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
    async def index(self, request: Request):
        """The upload-and-view page."""
        self._check_headers(request)
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            return _error(404, "the web page is not installed (vf3d/serving/static/index.html is missing)")
        return FileResponse(page, media_type="text/html")

    @api.get("/healthz")
    async def healthz(self, request: Request):
        """200 with the model replica's figures when a forward pass works; 503 otherwise."""
        self._check_headers(request)
        status = "ok"
        try:
            info = await asyncio.wait_for(self.model.info.remote(), timeout=HEALTH_TIMEOUT_S)
            self._last_info = info
        except Exception as error:  # any failure to reach the model means "not healthy"...
            if not (_is_backpressure(error) and self._last_info is not None):
                return _error(503, f"model unavailable: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".strip())
            # ...except a full queue: the model is alive and working through it. Failing the
            # probe would make a load balancer drop a busy endpoint and pile its load elsewhere.
            info, status = dict(self._last_info), "busy"
        info.update(
            status=status,
            cache_entries=len(self.cache),
            cache_hits=self.cache.hits,
            cache_misses=self.cache.misses,
            api_key_required=self.api_key is not None,
            inflight=self._inflight,
            shed=self.shed,
        )
        return info

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request):
        """The OpenAPI schema, when `api_docs` is on."""
        self._check_headers(request)
        if not self.config.api_docs:
            return _error(404, "API docs are off (set api_docs: true in the serve config)")
        return JSONResponse(request.app.openapi())

    @api.get("/docs", include_in_schema=False)
    async def docs(self, request: Request):
        """Swagger UI (its script comes from a CDN), when `api_docs` is on."""
        from fastapi.openapi.docs import get_swagger_ui_html

        self._check_headers(request)
        if not self.config.api_docs:
            return _error(404, "API docs are off (set api_docs: true in the serve config)")
        return get_swagger_ui_html(openapi_url=request.scope.get("root_path", "") + "/openapi.json", title=api.title)

    @api.post("/v1/image-to-3d")
    async def image_to_3d(self, request: Request, format: str = "glb", mesh_resolution: int | None = None, seed: int | None = None):
        """Image bytes (raw body or multipart field `image`) → mesh bytes (`format`: glb, obj or ply)."""
        from vf3d.mesh import MESH_CONTENT_TYPES

        started = time.monotonic()
        with self._admitted(request):
            params = MeshRequest.from_query(format, mesh_resolution, seed, self.config.max_mesh_resolution)
            planes, cached = await self._triplanes(request, started)
            result = await self._with_timeout(self.mesher.mesh.remote(planes, params.format, params.mesh_resolution), started, "mesher")
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
        with self._admitted(request):
            params = MeshRequest.from_query("glb", None, seed, self.config.max_mesh_resolution)
            planes, cached = await self._triplanes(request, started)
            # The model's response goes straight into the mesher's call: Serve hands the frames
            # [M, H, W, 3] from one replica to the other through the object store, and they never
            # pass through (nor are copied into) this process.
            frames = self.model.turntable.remote(planes, params.seed)
            video = await self._with_timeout(self.mesher.video.remote(frames), started, "model or mesher")
        headers = {
            "X-VF3D-Triplane-Cache": "hit" if cached else "miss",
            "X-VF3D-Seconds": f"{time.monotonic() - started:.3f}",
            "Content-Disposition": 'attachment; filename="turntable.mp4"',
        }
        return Response(video, media_type="video/mp4", headers=headers)


def _deployment_options(replicas, retry_after_s: int) -> dict:
    return {
        "max_queued_requests": replicas.max_queued_requests,
        "backpressure_config": {"status_code": 503, "retry_after_s": retry_after_s},
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
    # A local directory is resolved (replicas may run elsewhere); an object-store URI is kept as it is.
    model_dir = str(model_dir) if storage.is_uri(model_dir) else Path(model_dir).expanduser().resolve()
    model_config = Reconstructor.load_config(model_dir)
    settings = to_dict(config)
    model = ReconstructorModel.options(
        **_deployment_options(config.model, config.retry_after_s),
        health_check_period_s=config.health_check_period_s,
        health_check_timeout_s=config.health_check_timeout_s,
    ).bind(str(model_dir), settings)
    mesher = MeshBuilder.options(**_deployment_options(config.mesh, config.retry_after_s)).bind(str(model_dir), settings)
    return Ingress.options(**_deployment_options(config.ingress, config.retry_after_s)).bind(
        model, mesher, settings, model_config.encoder.image_size
    )


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
    from vf3d.serving.config import SERVE_PRESETS

    config = config_lib.resolve(SERVE_PRESETS, args.preset, args.config)
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

    from vf3d.ray_runtime import quiet_local_cluster

    # Serve's controller, proxy and replicas configure their own loggers (INFO, with an access log
    # line per request); a quiet local cluster keeps them at warnings like the rest of Ray.
    logging_config = None
    if quiet_local_cluster():
        logging_config = {"log_level": "WARNING"}
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # this process's Serve client lines
    serve.start(
        http_options={"host": config.host, "port": config.port, "request_timeout_s": config.request_timeout_s},
        logging_config=logging_config,
    )
    started = time.perf_counter()
    serve.run(application, name="vf3d", route_prefix="/", logging_config=logging_config)
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    url = f"http://{host}:{config.port}"
    log(
        f"ready in {time.perf_counter() - started:.1f}s: {url}/ "
        f"(POST /v1/image-to-3d, POST /v1/turntable, GET /healthz; API key {'required' if os.environ.get(API_KEY_ENV) else 'off'}); "
        f"Ray at {ray.get_runtime_context().gcs_address}"
    )
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


def check_port_free(host: str, port: int) -> str | None:
    """None when `host:port` can be listened on; otherwise one line saying why not.

    Binds the way Serve's proxy (uvicorn) does, with SO_REUSEADDR, so a port left in TIME_WAIT by
    an endpoint that just stopped counts as free, as it is for the proxy.
    """
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        return f"cannot listen on {host}:{port}: unknown host ({error.strerror})"
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            reason = (
                "already in use (another endpoint or program listens there; pick another --port)"
                if error.errno == errno.EADDRINUSE
                else error.strerror
            )
            return f"cannot listen on {host}:{port}: {reason}"
    return None
