"""A real S3 API for tests: moto's server on 127.0.0.1, reached over HTTP by pyarrow (no mocks).

`s3_server` (session) starts `moto.server.ThreadedMotoServer` on a free port; `s3_bucket`
(function) creates a fresh bucket and sets the standard variables (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`) with monkeypatch, so this
process and any process it starts (a `vf3d` subprocess and the local Ray cluster it starts) reach
the server the way they would reach AWS or MinIO. Ray workers inherit the environment of the
cluster's start: the integration tests' session cluster (`ray_local`) is started with
`s3_variables_for` the session's server, so stages run in the test process on that cluster reach
it too, and so is the session's `vf3d serve` endpoint. tests/conftest.py registers both fixtures
for every test (one server per test session, so per pytest-xdist worker).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest

S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL (http://127.0.0.1:PORT) of a moto S3 server running for the session."""
    pytest.importorskip("moto.server", reason="the S3 tests need moto[server] (pip install 'moto[server]', in the dev extra)")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextlib.contextmanager
def s3_variables_for(endpoint: str) -> Iterator[None]:
    """The standard S3 variables point at the server at `endpoint` for the block (and the ones
    that would override them are unset)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL", endpoint)
        patch.setenv("AWS_ACCESS_KEY_ID", "vf3d-test")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "vf3d-test-secret")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_PROFILE"):
            patch.delenv(name, raising=False)
        yield


@contextlib.contextmanager
def s3_bucket_on(endpoint: str) -> Iterator[str]:
    """Create a fresh bucket on the server at `endpoint` and point the standard variables at it
    for the block; yields the bucket's URI (s3://NAME)."""
    import pyarrow.fs as pafs

    with s3_variables_for(endpoint):
        bucket = f"vf3d-{uuid.uuid4().hex[:12]}"
        filesystem = pafs.S3FileSystem(
            endpoint_override=endpoint.removeprefix("http://"), scheme="http", region="us-east-1", allow_bucket_creation=True
        )
        filesystem.create_dir(bucket)
        yield f"s3://{bucket}"


@pytest.fixture
def s3_bucket(s3_server) -> Iterator[str]:
    """A new, empty bucket on `s3_server` and the AWS_* variables pointing at it for the test;
    yields its URI (s3://NAME)."""
    with s3_bucket_on(s3_server) as bucket:
        yield bucket


def s3_environment() -> dict[str, str]:
    """The S3 variables of this process (for a subprocess's environment)."""
    return {name: os.environ[name] for name in S3_ENV if name in os.environ}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
