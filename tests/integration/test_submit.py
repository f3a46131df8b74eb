"""`vf3d submit` against a real Ray head node (`ray start --head`, auth disabled, free ports, a
private temp dir): a debug render-assets job runs through the job server and writes its shards;
the same submit again finds that job instead of starting a second one.

Never `ray stop` here: it stops every Ray cluster on the machine, other sessions' included. The
head node is torn down by killing the process group of its `ray start --block` process and every
process it started (job drivers run in sessions of their own)."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from vf3d.data import shards

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
VF3D = str(BIN / "vf3d")
START_TIMEOUT_S = 120


def unclaimable_ports() -> range:
    """Ports no other process on the machine takes on its own: above the worker range of Ray
    clusters started with defaults (10002-19999) and below the kernel's ephemeral range, from which
    every outgoing connection (of the other test processes' clusters too) gets its local port. A
    port drawn from the ephemeral range can be taken that way between the draw and Ray's bind, and
    a Ray head process that cannot bind its port exits, taking the whole `ray start --block` down."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return range(20000, max(low, 20000 + 1000))


def bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """`count` distinct ports of `unclaimable_ports()` that are free right now."""
    candidates = unclaimable_ports()
    ports = []
    for port in random.sample(candidates, 400):
        if bindable(port):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError(f"fewer than {count} free ports in {candidates}")


def free_port_range(width: int) -> int:
    """The first of `width` consecutive ports of `unclaimable_ports()` none of which is bound now."""
    ports = unclaimable_ports()
    for _ in range(200):
        start = random.randrange(ports.start, ports.stop - width)
        if all(bindable(port) for port in range(start, start + width)):
            return start
    raise RuntimeError(f"no {width} consecutive free ports in {ports}")


def submit_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(RAY_AUTH_MODE="disabled", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


@dataclasses.dataclass
class RayHead:
    url: str  # the job server's
    process: subprocess.Popen  # `ray start --head --block`
    log_path: Path  # its output
    temp_dir: str

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])

    def state(self) -> str:
        """For failure messages: whether the head is still up, how it ended, the dashboard's log."""
        if self.process.poll() is None:
            state = "the Ray head is still running"
        else:
            state = f"the Ray head exited with code {self.process.returncode}; the end of its output:\n{self.log_tail()}"
        for log in Path(self.temp_dir, "session_latest", "logs").glob("dashboard.*"):
            state += f"\n--- end of {log.name}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        return state


@pytest.fixture(scope="module")
def ray_head():
    """A head node with the dashboard's job server on free ports; yields it as a `RayHead`."""
    import psutil

    names = [
        "port",
        "dashboard-port",
        "ray-client-server-port",
        "node-manager-port",
        "object-manager-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
        "metrics-export-port",
    ]
    workers = free_port_range(100)
    # Ray refuses a named port inside the worker range: draw the named ones outside it.
    while True:
        ports = dict(zip(names, free_ports(len(names))))
        if not any(workers <= port < workers + 100 for port in ports.values()):
            break
    # A short private temp dir: Unix socket paths must stay under 108 bytes, and nothing on the
    # machine should find this cluster through /tmp/ray's "current cluster" file.
    temp_dir = tempfile.mkdtemp(prefix="vf3d-ray-", dir="/tmp")
    log_path = Path(temp_dir + ".log")
    command = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--num-cpus",
        "4",
        "--node-ip-address",
        "127.0.0.1",
        "--include-dashboard=true",
        "--dashboard-host",
        "127.0.0.1",
        "--temp-dir",
        temp_dir,
        "--disable-usage-stats",
        f"--min-worker-port={workers}",
        f"--max-worker-port={workers + 99}",
        *(f"--{name}={port}" for name, port in ports.items()),
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=submit_env(), cwd=temp_dir, start_new_session=True)
    url = f"http://127.0.0.1:{ports['dashboard-port']}"
    head = RayHead(url, process, log_path, temp_dir)

    def stop() -> None:
        """Kill the head's process group and everything it started; check none of it is left."""
        try:
            started = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            started = []
        try:
            os.killpg(process.pid, signal.SIGKILL)  # SIGTERM makes Ray drain for 30 s first
        except ProcessLookupError:
            pass
        for child in started:  # job drivers live in sessions of their own
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        process.wait(timeout=30)
        _, alive = psutil.wait_procs(started, timeout=30)
        assert not alive, f"processes of the test's Ray head still running: {alive}"
        leftovers = [p.pid for p in psutil.process_iter(["cmdline"]) if any(temp_dir in part for part in (p.info["cmdline"] or []))]
        assert not leftovers, f"processes using {temp_dir} still running: {leftovers}"

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/jobs/", timeout=5) as answer:
                json.loads(answer.read())
            break
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                stop()
                pytest.fail(f"the Ray head's job server at {url} did not come up:\n{head.log_tail()}")
            time.sleep(0.5)
    try:
        yield head
    finally:
        stop()
        subprocess.run(["rm", "-rf", temp_dir, str(log_path)], check=False)


@pytest.fixture(scope="module")
def three_assets(tmp_path_factory):
    """Three real meshes from pybullet_data (a small job on 2 loaded cores)."""
    from vf3d.data.assets import gather_sample_assets

    root = tmp_path_factory.mktemp("assets")
    assert len(gather_sample_assets(root, limit=3)) == 3
    return root


def pipe(source: socket.socket, destination: socket.socket) -> None:
    """Copy bytes from `source` to `destination` until `source` closes, then close the write side."""
    try:
        while chunk := source.recv(65536):
            destination.sendall(chunk)
        destination.shutdown(socket.SHUT_WR)
    except OSError:
        pass


class AnswerDroppingProxy:
    """A TCP proxy on 127.0.0.1 in front of the job server. It passes everything through, except
    the answer to the first `POST /api/jobs/`: the server gets the whole request and acts on it
    (the job exists), then the client's connection is closed without a response, as an
    overloaded dashboard (or a load balancer in front of it) can do."""

    def __init__(self, upstream: str) -> None:
        self.upstream = ("127.0.0.1", int(upstream.rsplit(":", 1)[1]))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.dropped = 0
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self.serve, args=(client,), daemon=True).start()

    def serve(self, client: socket.socket) -> None:
        with client, socket.create_connection(self.upstream) as upstream:
            first = client.recv(65536)
            with self.lock:
                drop = first.startswith(b"POST /api/jobs/") and not self.dropped
                self.dropped += drop
            upstream.sendall(first)
            threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
            if drop:
                upstream.recv(65536)  # the server's answer, which the client never sees
            else:
                pipe(upstream, client)
            # shutdown, not only close: the other thread is blocked in client.recv, and Linux
            # neither wakes it nor sends the FIN while that call holds the socket.
            for end in (client, upstream):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def submit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([VF3D, "submit", *args], capture_output=True, text=True, timeout=600, cwd=cwd, env=submit_env())


def test_submit_wait_runs_a_debug_render_job_and_a_retry_finds_it(ray_head, three_assets, tmp_path):
    from ray.job_submission import JobSubmissionClient

    out = tmp_path / "orbits"
    # The first submission goes through a proxy that drops the job server's answer to it: the job
    # is created, but the client only sees its connection closed, and must not submit it twice.
    proxy = AnswerDroppingProxy(ray_head.url)
    # From outside the repository: the working dir comes from the package's location, and the job
    # file (inside it) is given by an absolute path.
    args = [
        "render-assets",
        "--address",
        proxy.address,
        "--wait",
        "--config",
        str(REPO / "jobs" / "configs" / "render-assets-debug.yaml"),
        "--",
        "--out",
        str(out),
        "--assets",
        str(three_assets),
    ]
    started = time.perf_counter()
    try:
        first = submit(*args, cwd=tmp_path)
    finally:
        proxy.close()
    seconds = time.perf_counter() - started
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:] + ray_head.state()
    assert proxy.dropped == 1 and "the connection to the Ray job server dropped" in first.stdout, first.stdout[-3000:]
    submitted = [line for line in first.stdout.splitlines() if line.startswith("submitted job ")]
    assert len(submitted) == 1, first.stdout
    args[2] = ray_head.url
    submission_id = submitted[0].split()[2].rstrip(":")
    # The job's own output came back through the log stream.
    assert "vf3d job render-assets: vf3d render-assets --preset debug" in first.stdout and "SUCCEEDED" in first.stdout
    assert "3 orbits and 0 errors" in first.stdout, first.stdout[-3000:]
    files = shards.list_shard_files(out)
    assert files and sum(pq.read_metadata(file).num_rows for file in files) == 3
    assert json.loads((out / "render_summary.json").read_text())["orbits_total"] == 3
    print(f"render-assets job through `vf3d submit --wait`: {seconds:.1f}s")

    client = JobSubmissionClient(ray_head.url)
    info = client.get_job_info(submission_id)
    assert info.runtime_env["py_modules"] and info.runtime_env["working_dir"].startswith("gcs://")
    assert info.metadata["vf3d_stage"] == "render-assets"
    assert info.entrypoint.startswith("python jobs/render_assets.py --config jobs/configs/render-assets-debug.yaml --out ")

    again = submit(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:] + ray_head.state()
    assert f"job {submission_id} already exists (SUCCEEDED): not submitted again" in again.stdout and "submitted job" not in again.stdout
    assert [job.submission_id for job in client.list_jobs()].count(submission_id) == 1 and len(client.list_jobs()) == 1
