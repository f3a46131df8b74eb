"""Shared fixtures: tiny seeded models written to disk once per test session."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import s3_fixtures
from processes import interrupt

# Tests never attach to a stray Ray cluster nor need its auth token (Ray 2.60 turns on token auth for a local ray.init).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

# One intra-op thread per process (OMP_NUM_THREADS, inherited by the Ray clusters and `vf3d`
# processes the tests start; a value already set wins): the tests' models are tiny, and the
# processes (two pytest-xdist workers, Ray workers) already keep the cores busy, so extra OpenMP
# threads only spin waiting for one another. Measured on 2 cores: the unit tests (`make
# test-fast`) took 158-160 busy CPU-s with one thread against 208-218 with torch's default of one
# per core.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Each Ray cluster's log monitor lists its log directory every 0.1 s while it holds fewer than
# this many files, and every 0.5 s (LOG_NAME_UPDATE_INTERVAL_S) above it; a new worker's output
# is still found within half a second. Measured on a cluster left with 117 log files: 1.57 CPU-s
# a minute with Ray's default (1000), 0.82 with 0, for each of the session's long-lived clusters.
os.environ.setdefault("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", "0")
if "torch" in sys.modules:  # imported before this file by a plugin: the variable came too late
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# The session's real S3 API (moto on 127.0.0.1) and a fresh bucket per test: tests/s3_fixtures.py.
s3_server, s3_bucket = s3_fixtures.s3_server, s3_fixtures.s3_bucket

TESTS_DIR = Path(__file__).resolve().parent
INTEGRATION_DIRS = ("integration", "e2e")
"""Folders whose every test gets the `integration` marker (`make test-fast` runs neither)."""


LONGEST_MODULES_FIRST = (
    "test_serve.py",
    "test_web_page.py",
    "test_object_storage.py",
    "test_train_recon.py",
    "test_training_harness.py",
    "test_autoscaling.py",
    "test_finetune_video.py",
    "test_synthesize.py",
    "test_metrics.py",
    "test_submit.py",
    "test_render_assets.py",
    "test_quiet_logs.py",
    "test_checkpoint_safety.py",
)
"""Modules by how long they took (slowest first, measured with --durations): the order in which
pytest-xdist hands them to workers (see pytest_collection_modifyitems)."""

SERVE_GROUP = "serve"
"""The scheduling unit of the modules that use the session's `serve_endpoint`."""


TAKES_SERVE_ENDPOINT = re.compile(r"\bdef \w+\([^)]*\bserve_endpoint\b")
"""A test or fixture that takes `serve_endpoint` as a parameter (signatures may span lines)."""


@functools.cache
def uses_serve_endpoint(module_path: Path) -> bool:
    """Whether a test module uses the `serve_endpoint` fixture: takes it as a parameter of a test
    or fixture. Read from the module's source, once, so that the xdist controller, which collects
    nothing, can tell too. A module that only names it (in a docstring) is not one: grouped with
    the serve modules, its tests would keep the endpoint up, idle, while they run."""
    try:
        source = Path(module_path).read_text(encoding="utf-8")
    except OSError:
        return False
    return TAKES_SERVE_ENDPOINT.search(source) is not None


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    """Mark everything under tests/integration and tests/e2e `integration`, by path, and order the
    tests in three groups: the modules that use `serve_endpoint` (a `vf3d serve` cluster, stopped
    once they are done: pytest_runtest_teardown), then the other integration tests, then unit
    tests. Under pytest-xdist (on a worker, whose collection order is the order the controller
    hands tests out in) the modules of each group go longest first (LONGEST_MODULES_FIRST), so
    that the workers finish together; in one process the serve modules go last. Either way they
    run one after another, which is what lets the endpoint stop after the last of them."""
    serve_modules = {item.path for item in items if uses_serve_endpoint(item.path)}
    groups = {}
    for item in items:
        try:
            folder = item.path.resolve().relative_to(TESTS_DIR).parts[0]
        except ValueError:  # collected from outside tests/
            folder = ""
        if folder in INTEGRATION_DIRS:
            item.add_marker(pytest.mark.integration)
        groups[item] = 2 if item.path in serve_modules else 1 if folder in INTEGRATION_DIRS else 0
    if hasattr(config, "workerinput"):  # a pytest-xdist worker

        def rank(item):
            name = item.path.name
            return (-groups[item], LONGEST_MODULES_FIRST.index(name) if name in LONGEST_MODULES_FIRST else len(LONGEST_MODULES_FIRST))

        items.sort(key=rank)  # stable: a module's tests stay together, in their order
    else:
        items.sort(key=groups.__getitem__)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: `-p no:xdist` must still load this file
def pytest_xdist_make_scheduler(config, log):
    """Hand tests out a module at a time, and the serve modules as one unit (see ModuleScheduling)."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        """pytest-xdist's scope scheduling with a test module as the unit (its module fixtures, a
        training or a synthesis run, are built once) and the modules sharing the session's
        `vf3d serve` endpoint as one unit (one endpoint per session). The units go out in the
        workers' collection order (`--no-loadscope-reorder`; see pytest_collection_modifyitems),
        each to the next worker running low.

        Not `--dist loadgroup` with xdist_group markers: xdist 3.8 groups by rewriting a private
        node-id attribute that pytest 9 no longer reads, so the groups silently fall apart."""

        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return SERVE_GROUP if uses_serve_endpoint(Path(config.rootpath) / module) else module

    return ModuleScheduling(config, log)


REFERENCE_LOOP_ITERATIONS = 3_000_000
"""A fixed pure-Python loop, timed (best of three) at the start and the end of a run."""

_REFERENCE_LOOP_AT_START = pytest.StashKey[float]()


def reference_loop_cpu_seconds(iterations: int = REFERENCE_LOOP_ITERATIONS, repeats: int = 3) -> float:
    """CPU-seconds this process spends on a fixed loop (the best of `repeats`): how fast a core of
    this machine runs right now. Shared virtual machines change speed by tens of percent within
    hours (another tenant on the host, a lower clock), which moves the suite's time as much as any
    change to it; the number printed beside the run's time tells such runs apart. CPU time, not
    wall time, so the tests running beside it hardly count."""
    timings = []
    for _ in range(repeats):
        started = time.process_time()
        total = 0
        for index in range(iterations):
            total += index * index % 7
        timings.append(time.process_time() - started)
    return min(timings)


def _runs_the_session(config) -> bool:
    """Whether this process reports the run: the xdist controller, or the only process."""
    return not hasattr(config, "workerinput")


def pytest_sessionstart(session):
    if _runs_the_session(session.config):
        session.config.stash[_REFERENCE_LOOP_AT_START] = reference_loop_cpu_seconds()


def pytest_terminal_summary(terminalreporter, config):
    """One line beside the run's time: the reference loop's CPU-seconds at the start and the end."""
    if _runs_the_session(config) and _REFERENCE_LOOP_AT_START in config.stash:
        at_start, at_end = config.stash[_REFERENCE_LOOP_AT_START], reference_loop_cpu_seconds()
        terminalreporter.write_line(
            f"machine speed: a fixed Python loop took {at_start:.2f} CPU-s at the start of this run and {at_end:.2f} at its end "
            f"(more is slower; compare runs' times only at similar speeds)"
        )


def run_vf3d(*args, cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """Run `vf3d ARGS` through the console script's own `main` in this process (from `cwd`), with
    its stdout and stderr captured: → its exit status and output, like `subprocess.run`.

    In this process because a fresh interpreter spends ~7 s of a 2-core machine importing torch
    before the command even parses its arguments; the installed console script itself is run as a
    subprocess by tests/unit/test_cli.py::test_the_console_script_runs."""
    from vf3d.cli import main

    argv = [str(arg) for arg in args]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd or os.getcwd()), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = main(argv)
        except SystemExit as exit:  # argparse's errors and --help
            status = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
            if isinstance(exit.code, str):
                print(exit.code, file=sys.stderr)
    return subprocess.CompletedProcess(["vf3d", *argv], status, stdout.getvalue(), stderr.getvalue())


@pytest.fixture(scope="session")
def vf3d_main():
    """`run_vf3d`: run a `vf3d` command in this process; → CompletedProcess (returncode, stdout, stderr)."""
    return run_vf3d


@pytest.fixture(scope="session")
def debug_config():
    """A fresh `debug` reconstructor config."""
    from vf3d import config
    from vf3d.models.reconstructor.config import RECONSTRUCTOR_PRESETS

    return config.preset(RECONSTRUCTOR_PRESETS, "debug")


@pytest.fixture(scope="session")
def debug_model_dir(tmp_path_factory, debug_config):
    """A seeded random `debug` reconstructor saved as a model directory."""
    import torch

    from vf3d.models.reconstructor import Reconstructor

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("models") / "debug-reconstructor"
    Reconstructor(debug_config).save_pretrained(directory)
    return directory


@dataclasses.dataclass
class ServeEndpoint:
    """A running `vf3d serve` process (its own local Ray cluster) and how to reach it."""

    url: str
    api_key: str
    ray_address: str
    log_path: Path
    process: subprocess.Popen
    config_overrides: dict = dataclasses.field(default_factory=dict)
    """What the endpoint's --config file sets on top of the serve preset (`SERVE_ENDPOINT_OVERRIDES`)."""

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header the endpoint requires."""
        return {"Authorization": f"Bearer {self.api_key}"}

    def log_tail(self, lines: int = 40) -> str:
        """The end of the endpoint's output (for failure messages)."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


SERVE_ENDPOINT_OVERRIDES = {
    # The debug preset decodes one upload at a time (max_concurrent_decodes 1, a memory bound for
    # 2 cores), so concurrent requests reach the model one decode apart: a partial batch waits
    # 0.5 s for the rest instead of 0.05 s, or test_concurrent_requests_share_batches would depend
    # on how fast this machine decodes a PNG.
    "batch_wait_timeout_s": 0.5,
    # Meshes on a 32³ grid by default (the preset's is 64³): a random model's field is surface
    # everywhere, and the browser test's software WebGL (SwiftShader) draws the 64³ mesh's 220k
    # faces at seconds per frame. Requests still choose their own `mesh_resolution`.
    "inference": {"mesh_resolution": 32},
}
"""What the session's endpoint sets on top of the debug serve preset (its --config file)."""


STARTED_ENDPOINTS: list[ServeEndpoint] = []
"""The session's `vf3d serve` endpoint once started (pytest_runtest_teardown stops it early)."""


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """Stop the session's endpoint right after the last test of the modules that use it.

    Those modules run one after another (see pytest_collection_modifyitems and
    ModuleScheduling), and an idle `vf3d serve` cluster keeps about a fifth of a core busy (its
    Serve controller, proxy, replicas' health checks, GCS and raylet): on 2 cores, for the rest of
    the session, that is time every other test loses. Under pytest-xdist `nextitem` is the next
    test this worker runs (None at its end)."""
    if STARTED_ENDPOINTS and uses_serve_endpoint(item.path) and (nextitem is None or not uses_serve_endpoint(nextitem.path)):
        interrupt(STARTED_ENDPOINTS[0].process)


@pytest.fixture
def serve_endpoint(running_serve_endpoint):
    """The session's `vf3d serve` endpoint (`running_serve_endpoint`), checked to be still up."""
    if running_serve_endpoint.process.poll() is not None:
        pytest.fail(
            f"the session's vf3d serve endpoint is not running (exit status {running_serve_endpoint.process.returncode}); it is "
            f"stopped after the last module that names `serve_endpoint` in its source:\n{running_serve_endpoint.log_tail()}"
        )
    return running_serve_endpoint


@pytest.fixture(scope="session")
def debug_model_uri(s3_server, debug_model_dir):
    """`debug_model_dir` uploaded to a bucket of the session's S3 server (its s3:// URI)."""
    from vf3d import storage

    with s3_fixtures.s3_bucket_on(s3_server) as bucket:
        uri = f"{bucket}/models/debug-reconstructor"
        storage.upload_tree(debug_model_dir, uri, last=("config.json",))
    return uri


@pytest.fixture(scope="session")
def running_serve_endpoint(tmp_path_factory, s3_server, debug_model_uri):
    """`vf3d serve` on the debug reconstructor, in a subprocess with its own local Ray cluster, an
    API key from VF3D_API_KEY and a free port; started once per session (by the first test that
    uses `serve_endpoint`), stopped with Ctrl-C after the last one (pytest_runtest_teardown).

    Its model directory is on S3 (`debug_model_uri`, read through the standard AWS variables, as
    on a cluster), so every test of the endpoint also checks serving from an object store; tests
    compare its answers with local inference on `debug_model_dir`, the same weights."""
    import yaml

    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    overrides = log_path.with_name("serve-overrides.yaml")
    overrides.write_text(yaml.safe_dump(SERVE_ENDPOINT_OVERRIDES))
    port = _free_port()
    with s3_fixtures.s3_variables_for(s3_server):  # set for the copy only: this process's are restored
        env = {**os.environ, "VF3D_API_KEY": "test-key-0123456789", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "vf3d.cli", "serve", "--model", debug_model_uri, "--port", str(port), "--config", str(overrides)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    endpoint = ServeEndpoint(f"http://127.0.0.1:{port}", env["VF3D_API_KEY"], "", log_path, process, SERVE_ENDPOINT_OVERRIDES)
    deadline = time.monotonic() + 300
    ready = None
    while ready is None:
        ready = re.search(r"ready in .*Ray at (\S+)\n", log_path.read_text(errors="replace"))
        if process.poll() is not None:
            pytest.fail(f"vf3d serve exited with {process.returncode}:\n{endpoint.log_tail()}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"vf3d serve was not ready after 300 s:\n{endpoint.log_tail()}")
        time.sleep(0.5)
    endpoint.ray_address = ready.group(1)
    STARTED_ENDPOINTS.append(endpoint)
    yield endpoint
    STARTED_ENDPOINTS.remove(endpoint)
    interrupt(process)  # a no-op when it was stopped early
