"""The endpoint's pieces without a running Serve: the HTTP boundary (auth, sniffing, decoding,
limits, cache), the model deployment's class and health check, the serve configs and
serve/config.yaml, and `vf3d serve`'s input errors."""

from __future__ import annotations

import asyncio
import io
import struct
import subprocess
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from vf3d import config as config_lib
from vf3d.models.reconstructor.config import InferenceConfig
from vf3d.serving.config import SERVE_PRESETS
from vf3d.serving.http import MeshRequest, RequestError, TriplaneCache, check_api_key, check_headers, decode_image, image_key, sniff_format

REPO = Path(__file__).resolve().parents[2]
VF3D = str(Path(sys.executable).with_name("vf3d"))


def _encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def _status(call) -> tuple[int, str]:
    with pytest.raises(RequestError) as error:
        call()
    return error.value.status, error.value.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"])
def test_sniff_recognises_every_supported_format_from_its_bytes(fmt):
    array = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    assert (
        sniff_format(_encoded(array, fmt))
        == {"PNG": "png", "JPEG": "jpeg", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tiff"}[fmt]
    )


@pytest.mark.parametrize(
    "body, looks_like",
    [
        (b"just some words", "text"),
        (b"  <!DOCTYPE html><html></html>", "HTML"),
        (b'{"image": "cat.png"}', "JSON"),
        (b"%PDF-1.7\n\xe2\xe3\xcf\xd3 binary", "binary data starting with 255044462d312e37"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "text"),  # RIFF but not WebP
    ],
)
def test_sniff_refuses_non_images_with_415_saying_what_they_look_like(body, looks_like):
    status, message = _status(lambda: sniff_format(body))
    assert status == 415 and f"looks like {looks_like}" in message


def test_api_key_checks():
    check_api_key(None, None)  # no key configured: open
    check_api_key("Bearer anything", "")
    check_api_key("Bearer s3cret", "s3cret")
    check_api_key("bearer s3cret", "s3cret")  # the scheme is case-insensitive (RFC 7235)
    assert _status(lambda: check_api_key(None, "s3cret")) == (401, "missing API key: send the header 'Authorization: Bearer <key>'")
    for header in ("Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "s3cret", "Bearer "):
        assert _status(lambda header=header: check_api_key(header, "s3cret")) == (401, "invalid API key")


def test_mesh_request_parameters():
    assert MeshRequest.from_query("GLB", None, None, 128) == MeshRequest("glb", None, None)
    assert MeshRequest.from_query("ply", 64, 7, 128) == MeshRequest("ply", 64, 7)
    for args, words in [
        (("stl", None, None), "format must be one of glb, obj, ply"),
        (("glb", 8, None), "between 16 and 128"),
        (("glb", 129, None), "between 16 and 128"),
        (("glb", None, -1), "seed"),
    ]:
        status, message = _status(lambda args=args: MeshRequest.from_query(*args, 128))
        assert status == 422 and words in message


def _png_bomb(width: int, height: int) -> bytes:
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 4096))
        + chunk(b"IEND", b"")
    )


def test_decode_image_prepares_photos_and_refuses_bad_ones():
    import skimage.data

    inference = config_lib.preset(SERVE_PRESETS, "debug").inference
    prepared = decode_image(_encoded(skimage.data.chelsea(), "PNG"), 32, inference, max_pixels=10_000_000, min_side=16)
    assert prepared.shape == (3, 32, 32) and prepared.dtype == np.float32
    assert 0.0 <= prepared.min() and prepared.max() <= 1.0 and prepared.std() > 0.05
    cases = [
        (_png_bomb(20000, 20000), 413, "pixels"),  # refused from the header, nothing decoded
        (_png_bomb(4000, 3000), 413, "more than the limit of 10000000"),
        (_encoded(np.zeros((8, 300, 3), np.uint8), "PNG"), 422, "300x8 pixels; at least 16x16"),
        (_encoded(skimage.data.chelsea(), "PNG")[:5000], 400, "truncated"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, 400, "not a decodable image"),
        (b"hello", 415, "looks like text"),
    ]
    for data, status, words in cases:
        got, message = _status(lambda data=data: decode_image(data, 32, inference, max_pixels=10_000_000, min_side=16))
        assert got == status and words in message, message


def test_triplane_cache_is_lru_and_keys_on_bytes_and_preprocessing():
    cache = TriplaneCache(2)
    planes = [np.full((1, 3, 2, 4, 4), index, np.float32) for index in range(3)]
    cache.put("a", planes[0])
    cache.put("b", planes[1])
    assert cache.get("a") is planes[0]  # "a" is now the most recent
    cache.put("c", planes[2])  # evicts "b"
    assert cache.get("b") is None and cache.get("c") is planes[2] and len(cache) == 2
    assert (cache.hits, cache.misses) == (2, 1)
    disabled = TriplaneCache(0)
    disabled.put("a", planes[0])
    assert disabled.get("a") is None and len(disabled) == 0

    inference = InferenceConfig()
    assert image_key(b"img", inference) == image_key(b"img", InferenceConfig())
    assert image_key(b"img", inference) != image_key(b"img2", inference)
    assert image_key(b"img", inference) != image_key(b"img", InferenceConfig(mask_method="none"))


def test_serve_presets_validate_and_bad_settings_are_named():
    for name in SERVE_PRESETS:
        config = config_lib.preset(SERVE_PRESETS, name).validate()
        assert config.model.max_ongoing_requests >= config.max_batch_size
    assert config_lib.preset(SERVE_PRESETS, "vfusion3d").model.num_gpus == 1.0
    debug = config_lib.preset(SERVE_PRESETS, "debug")
    for overrides, words in [
        ({"max_batch_size": 16}, "model.max_ongoing_requests must be >= max_batch_size"),
        ({"model": {"min_replicas": 3, "max_replicas": 2}}, "need model.min_replicas <= initial_replicas <= max_replicas"),
        ({"inference": {"mesh_resolution": 256}}, "inference.mesh_resolution must be <= max_mesh_resolution"),
        ({"port": 70000}, "port must be between"),
    ]:
        with pytest.raises(config_lib.ConfigError, match=words):
            config_lib.merge(debug, overrides).validate()
    with pytest.raises(config_lib.ConfigError, match="unknown key"):
        config_lib.merge(debug, {"mesh": {"gpus": 1}})


def test_serve_config_yaml_is_a_valid_serve_config_whose_args_build_the_app(debug_model_dir):
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    from vf3d.models.pretrained import ModelDirectoryError
    from vf3d.serving.app import ServeAppArgs, app_from_args

    document = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(document)
    (application,) = schema.applications
    assert application.import_path == "serve.app:build_app" and application.route_prefix == "/"
    args = ServeAppArgs.model_validate(application.args)
    assert args.preset == "vfusion3d"

    # The builder Serve imports, with the file's own settings, on a model directory that exists.
    sys.path.insert(0, str(REPO))
    try:
        from serve.app import build_app
    finally:
        sys.path.remove(str(REPO))
    built = build_app(ServeAppArgs.model_validate({**application.args, "model": str(debug_model_dir)}))
    assert isinstance(built, Application)
    with pytest.raises(ModelDirectoryError, match="model directory not found"):
        app_from_args({**application.args, "model": "/nonexistent/model"})
    with pytest.raises(config_lib.ConfigError, match="unknown key"):
        app_from_args({"model": str(debug_model_dir), "overrides": {"batch": 4}})
    with pytest.raises(Exception, match="Extra inputs are not permitted"):
        ServeAppArgs.model_validate({"model": str(debug_model_dir), "replicas": 2})


def test_model_deployment_encodes_batches_and_its_health_check_fails_on_a_broken_model(debug_model_dir, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from vf3d.serving.deployments import ReconstructorModel

    model_class = ReconstructorModel.func_or_class
    settings = config_lib.to_dict(config_lib.merge(config_lib.preset(SERVE_PRESETS, "debug"), {"inference": {"device": "cpu"}}))
    replica = model_class(str(debug_model_dir), settings)
    size = replica.pipeline.model.config.encoder.image_size
    images = [np.random.default_rng(seed).random((3, size, size), dtype=np.float32) for seed in range(3)]

    # `@serve.batch` itself needs a replica (tests/integration/test_serve.py covers it); the
    # batched forward pass it calls must give each image the triplanes it gets alone.
    batched = replica._encode(images)
    assert batched.shape[0] == 3 and batched.dtype == np.float32
    np.testing.assert_allclose(batched[1:2], replica._encode([images[1]]), atol=1e-5)
    asyncio.run(replica.check_health())
    assert asyncio.run(replica.info())["device"] == "cpu"

    broken_dir = tmp_path / "broken"
    broken_dir.mkdir()
    (broken_dir / "config.json").write_bytes((debug_model_dir / "config.json").read_bytes())
    weights = load_file(str(debug_model_dir / "model.safetensors"))
    name = next(key for key in weights if key.startswith("transformer") and weights[key].is_floating_point())
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(broken_dir / "model.safetensors"))
    broken = model_class(str(broken_dir), settings)
    with pytest.raises(RuntimeError, match="non-finite triplanes"):
        asyncio.run(broken.check_health())
    with pytest.raises(RuntimeError, match="non-finite"):
        asyncio.run(broken.info())


@pytest.mark.heavy  # two `vf3d serve` subprocesses
def test_vf3d_serve_refuses_a_wrong_model_directory_before_starting_ray(tmp_path):
    missing = subprocess.run([VF3D, "serve", "--model", str(tmp_path / "nope")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"vf3d serve: error: model directory not found: {tmp_path / 'nope'}"
    bad_config = tmp_path / "serve.yaml"
    bad_config.write_text("max_batch_size: 64\n")
    refused = subprocess.run(
        [VF3D, "serve", "--model", str(tmp_path), "--config", str(bad_config)], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2 and "max_ongoing_requests must be >= max_batch_size" in refused.stderr


def test_ingress_turns_slow_calls_into_504_and_dead_replicas_into_503():
    from ray.exceptions import ActorDiedError

    from vf3d.serving.app import Ingress

    # The method on a stand-in holding only the config (an instance would need Serve handles).
    holder = types.SimpleNamespace(config=config_lib.merge(config_lib.preset(SERVE_PRESETS, "debug"), {"request_timeout_s": 0.2}), shed=0)
    holder._retry_after = lambda: Ingress.func_or_class._retry_after(holder)

    class ingress:  # noqa: N801 - reads like the instance in the assertions below
        @staticmethod
        def _with_timeout(awaitable, started):
            return Ingress.func_or_class._with_timeout(holder, awaitable, started)

    async def slow():
        await asyncio.sleep(5)

    async def dead():
        raise ActorDiedError()

    async def broken():
        raise ValueError("a bug, not a replica failure")

    import time

    assert _status(lambda: asyncio.run(ingress._with_timeout(slow(), time.monotonic()))) == (
        504,
        "request took longer than request_timeout_s=0.2",
    )
    status, message = _status(lambda: asyncio.run(ingress._with_timeout(dead(), time.monotonic())))
    assert status == 503 and "retry shortly" in message

    async def full():
        from ray.serve.exceptions import BackPressureError

        raise BackPressureError(num_queued_requests=32, max_queued_requests=32, retry_after_s=5)

    with pytest.raises(RequestError) as shed:
        asyncio.run(ingress._with_timeout(full(), time.monotonic()))
    assert shed.value.status == 503 and "overloaded" in shed.value.message
    assert shed.value.headers == {"Retry-After": "5"} and holder.shed == 1
    with pytest.raises(ValueError, match="a bug"):
        asyncio.run(ingress._with_timeout(broken(), time.monotonic()))


def test_header_limits_answer_431_naming_the_limit():
    check_headers([(b"host", b"x"), (b"authorization", b"Bearer k")], max_count=8, max_bytes=1024)
    status, message = _status(lambda: check_headers([(b"x-a%d" % i, b"1") for i in range(9)], max_count=8, max_bytes=1024))
    assert (status, message) == (431, "request has 9 headers, more than the limit of 8")
    status, message = _status(lambda: check_headers([(b"cookie", b"a" * 2000)], max_count=8, max_bytes=1024))
    assert (status, message) == (431, "request headers are 2006 bytes, more than the limit of 1024 bytes")


def test_decode_image_judges_the_original_size_and_decodes_large_photos_small():
    inference = config_lib.preset(SERVE_PRESETS, "debug").inference
    # 6000 x 12: shrunk to the working size while decoding, but judged by its real 12-pixel side.
    status, message = _status(
        lambda: decode_image(_encoded(np.full((12, 6000, 3), 200, np.uint8), "PNG"), 32, inference, max_pixels=10_000_000, min_side=16)
    )
    assert (status, message) == (422, "image is 6000x12 pixels; at least 16x16 is needed")
    # A large photo decodes to the working size, not its full size, and still gives the model input.
    import skimage.data

    big = np.asarray(Image.fromarray(skimage.data.chelsea()).resize((3000, 2000)))
    assert decode_image(_encoded(big, "JPEG"), 32, inference, max_pixels=10_000_000, min_side=16).shape == (3, 32, 32)


def test_decode_image_refuses_a_fully_transparent_image_with_422():
    # A valid image with nothing to reconstruct: no mesh of a blank canvas.
    inference = config_lib.preset(SERVE_PRESETS, "debug").inference
    transparent = _encoded(np.zeros((64, 64, 4), np.uint8), "PNG")
    status, message = _status(lambda: decode_image(transparent, 32, inference, max_pixels=10_000_000, min_side=16))
    assert status == 422 and message.startswith("no foreground"), message


def test_new_serve_limits_validate():
    debug = config_lib.preset(SERVE_PRESETS, "debug")
    assert debug.api_docs is False and debug.max_inflight_requests < debug.ingress.max_ongoing_requests
    for overrides, words in [
        ({"max_inflight_requests": 32}, "max_inflight_requests must be >= 1 and < ingress.max_ongoing_requests"),
        ({"max_concurrent_decodes": 0}, "max_concurrent_decodes must be >= 1"),
        ({"model": {"max_queued_requests": 0}}, "model.max_queued_requests must be -1"),
        ({"max_header_bytes": 10}, "max_header_bytes"),
    ]:
        with pytest.raises(config_lib.ConfigError, match=words):
            config_lib.merge(debug, overrides).validate()


@pytest.mark.heavy  # a `vf3d serve` subprocess
def test_vf3d_serve_on_a_busy_port_says_so_in_one_line_before_starting_ray(debug_model_dir):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {key: value for key, value in __import__("os").environ.items() if key != "RAY_ADDRESS"}
        result = subprocess.run(
            [VF3D, "serve", "--model", str(debug_model_dir), "--port", str(port)], capture_output=True, text=True, timeout=120, env=env
        )
    assert result.returncode == 2, result.stderr
    assert (
        result.stderr.strip()
        == f"vf3d serve: error: cannot listen on 127.0.0.1:{port}: already in use (another endpoint or program listens there; pick another --port)"
    )
    assert "started a local Ray cluster" not in result.stdout


def test_model_health_check_does_not_wait_behind_a_render(debug_model_dir):
    from vf3d.serving.deployments import ReconstructorModel

    settings = config_lib.to_dict(config_lib.merge(config_lib.preset(SERVE_PRESETS, "debug"), {"inference": {"device": "cpu"}}))
    replica = ReconstructorModel.func_or_class(str(debug_model_dir), settings)

    async def during_a_render():
        async with replica._lock:  # what a 160-view turntable holds for its whole length
            await asyncio.wait_for(replica.check_health(), timeout=60)
            return (await asyncio.wait_for(replica.info(), timeout=60))["device"]

    assert asyncio.run(during_a_render()) == "cpu"
