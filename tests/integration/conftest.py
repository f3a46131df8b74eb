"""Integration fixtures: real sample meshes, one S3 server and one local Ray cluster per test session."""

from __future__ import annotations

import contextlib
import os

import pytest
import s3_fixtures


@pytest.fixture(scope="session")
def sample_assets(tmp_path_factory):
    """A folder of real meshes from pybullet_data plus a corrupt, an empty and an unsupported file."""
    from vf3d.data.assets import gather_sample_assets

    root = tmp_path_factory.mktemp("assets")
    gather_sample_assets(root, limit=10)
    (root / "broken").mkdir()
    (root / "broken" / "corrupt.glb").write_bytes(b"glTF\x02\x00\x00\x00garbage" * 10)
    (root / "broken" / "empty.obj").write_bytes(b"")
    (root / "broken" / "notes.fbx").write_text("not a format we read")
    return root


@pytest.fixture(scope="session")
def ray_local(request):
    """A private local Ray cluster for in-process Ray Data tests and trainings (never a stray one);
    its GCS address, for a `vf3d` process that is to be a driver on it (`start_vf3d(ray_address=)`).

    Its trainers' controllers poll their workers every 0.2 s instead of 2 s: a Ray Train V2
    worker's report waits until the controller has consumed its previous one, the controller reads
    them once per poll, and each of its state changes (start, restart, finish) waits for a poll.
    (`TorchTrainer.fit` forwards RAY_TRAIN_* variables to its controller actor.)

    Its processes are started with the standard S3 variables pointing at the session's moto
    server (`s3_server`, when moto is installed), which workers inherit: so stages run in the test
    process reach s3:// URIs on that server from every worker, with no cluster of their own. The
    variables are set only while the cluster starts; a test sets them for itself (`s3_bucket_on`)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from vf3d.ray_runtime import MIN_LOCAL_CPUS, start_local_ray

    try:
        import moto.server  # noqa: F401

        s3_variables = s3_fixtures.s3_variables_for(request.getfixturevalue("s3_server"))
    except ImportError:
        s3_variables = contextlib.nullcontext()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
        # As `vf3d` does for local runs: trainers fed by Ray Data need CPUs left for the data tasks.
        with s3_variables:
            start_local_ray(num_cpus=MIN_LOCAL_CPUS, include_dashboard=False)
        yield ray.get_runtime_context().gcs_address
        ray.shutdown()
