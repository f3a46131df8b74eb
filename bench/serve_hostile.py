"""Hostile-load benchmark: the image-to-3D endpoint under 16 clients sending 40-megapixel uploads.

What it measures (one run, one private local Ray cluster of 4 logical CPUs, only 127.0.0.1):
  Ray Serve runs one application built by `vf3d.serving.app.build_application` from a seeded
  random `debug` reconstructor with the `debug` serve preset (one ingress, one model and one mesh
  replica; `max_concurrent_decodes` 1, `max_inflight_requests` 24, `max_queued_requests` on every
  deployment). C client threads (--clients, default 16) send requests back to back for a fixed
  time (--seconds, default 60; --quick 20), at most --max-requests in all (default 2000), each
  with a 120 s client timeout. Every request uploads a 7744 x 5160 (40.0 MP) PNG of a disc on a
  flat background, ~0.15 MB on the wire and ~160 MB as decoded pixels, made new bytes by a tEXt
  chunk carrying its number (the ingress's triplane cache keys on the bytes, so none is a hit).
  Of every 6 requests: 3 are meshes (`/v1/image-to-3d?mesh_resolution=32&format=ply`), 2 are
  turntables (`/v1/turntable`) and 1 is a mesh carrying 100 extra headers (refused with 431).

  Reported: status-code counts per kind, p50 and p99 client latency (send to last byte) of the 200s
  per kind and of every refusal, the peak resident memory (VmHWM, reset before the load) and the
  RSS before of each process: ingress, model and mesh replicas and Serve's HTTP proxy, found among
  this process's descendants; and whether GET /healthz answers 200 "ok" after the load.

What to expect: on 2 shared cores the endpoint cannot keep up with 16 clients of 40 MP uploads, so
most requests are shed at once with 503 {"error"} and `Retry-After` (the ingress holds at most
`max_inflight_requests` image requests, and the model and mesher queues are bounded), none answers
500, the ingress's peak stays near its base + one decode (~16 bytes per pixel for WebP, less for
PNG) + the bodies in flight, and /healthz is "ok" afterwards. Nothing asserts a figure; the table
says what was measured.

Run (from the repository root):
  python bench/serve_hostile.py                  # 60 s of load; about 2 minutes with start-up
  python bench/serve_hostile.py --quick          # 20 s of load
  python bench/serve_hostile.py --json bench-serve-hostile.json
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import socket
import struct
import tempfile
import threading
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from report import BENCH_START, Row, log, markdown_table, write_json

SEED = 0
SIZE = (7744, 5160)
"""Upload size (W, H): 40.0 MP, just under the serve presets' max_pixels."""
KINDS = ("mesh", "turntable", "mesh", "mesh", "turntable", "headers")
"""The request kinds, in the order each client cycles through them."""
CLIENT_TIMEOUT_S = 120.0
DEPLOYMENTS = {
    "ingress": "ServeReplica:hostile:Ingress",
    "model": "ServeReplica:hostile:ReconstructorModel",
    "mesher": "ServeReplica:hostile:MeshBuilder",
    "proxy": "ProxyActor",
}
"""Process title fragment of each process whose memory is reported."""


def base_png() -> bytes:
    """The 40 MP PNG every upload starts from (a red disc on light grey)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", SIZE, (235, 235, 235))
    width, height = SIZE
    ImageDraw.Draw(image).ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=(200, 40, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def unique(png: bytes, number: int) -> bytes:
    """`png` with a tEXt chunk after IHDR carrying `number`: the same pixels, new bytes."""
    payload = b"vf3d-bench\x00" + str(number).encode()
    chunk = struct.pack(">I", len(payload)) + b"tEXt" + payload + struct.pack(">I", zlib.crc32(b"tEXt" + payload))
    end_of_ihdr = 8 + 4 + 4 + 13 + 4
    return png[:end_of_ihdr] + chunk + png[end_of_ihdr:]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_ids() -> dict[str, int]:
    """PID of each process in DEPLOYMENTS, among this process's descendants."""
    import psutil

    found: dict[str, int] = {}
    for child in psutil.Process().children(recursive=True):
        try:
            title = " ".join(child.cmdline())
        except psutil.Error:
            continue
        for name, fragment in DEPLOYMENTS.items():
            if fragment in title and name not in found:
                found[name] = child.pid
    return found


def status_mb(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux clear_refs); False where refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def load(url: str, headers: dict[str, str], png: bytes, clients: int, seconds: float, max_requests: int) -> list[dict[str, Any]]:
    """C clients, back to back until `seconds` pass or `max_requests` were sent; one record each."""
    import requests

    records: list[dict[str, Any]] = []
    lock = threading.Lock()
    counter = iter(range(max_requests))
    gate = threading.Barrier(clients + 1)
    deadline: list[float] = []

    def client(index: int) -> None:
        with requests.Session() as session:
            gate.wait()
            turn = index
            while time.perf_counter() < deadline[0]:
                with lock:
                    number = next(counter, None)
                if number is None:
                    return
                kind = KINDS[turn % len(KINDS)]
                turn += 1
                extra = {f"X-Filler-{n}": "1" for n in range(100)} if kind == "headers" else {}
                path = "/v1/turntable" if kind == "turntable" else "/v1/image-to-3d"
                params = {} if kind == "turntable" else {"mesh_resolution": 32, "format": "ply"}
                sent = time.perf_counter()
                try:
                    response = session.post(
                        url + path, data=unique(png, number), params=params, headers={**headers, **extra}, timeout=CLIENT_TIMEOUT_S
                    )
                    status, json_body = str(response.status_code), response.headers.get("content-type", "").startswith("application/json")
                    error = response.json().get("error", "") if json_body and response.status_code != 200 else ""
                    retry_after = response.headers.get("retry-after")
                except Exception as failure:  # noqa: BLE001 - a client-side failure is a result too
                    status, json_body, error, retry_after = type(failure).__name__, False, str(failure)[:200], None
                with lock:
                    records.append(
                        {
                            "kind": kind,
                            "status": status,
                            "ms": (time.perf_counter() - sent) * 1000,
                            "json": json_body,
                            "error": error[:200],
                            "retry_after": retry_after,
                        }
                    )

    threads = [threading.Thread(target=client, args=(index,), daemon=True) for index in range(clients)]
    for thread in threads:
        thread.start()
    deadline.append(time.perf_counter() + seconds)
    gate.wait()
    for thread in threads:
        thread.join()
    return records


def percentile(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q):.0f}" if values else "—"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 s of load instead of 60")
    parser.add_argument("--clients", type=int, default=16, help="client threads (default 16)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds of load (default 60; --quick 20)")
    parser.add_argument("--max-requests", type=int, default=2000, help="requests sent at most (default 2000)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    if args.clients < 1 or args.max_requests < 1:
        raise SystemExit("--clients and --max-requests must be >= 1")
    seconds = args.seconds if args.seconds is not None else (20.0 if args.quick else 60.0)
    mode_name = "quick" if args.quick else "default"
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private cluster needs no token
    os.environ["VF3D_API_KEY"] = "bench-key"  # the replicas inherit it: requests carry the key, as in production

    import ray
    import requests
    import torch
    from ray import serve

    from vf3d import config as config_lib
    from vf3d.models.reconstructor import Reconstructor
    from vf3d.models.reconstructor.config import RECONSTRUCTOR_PRESETS
    from vf3d.serving.app import build_application
    from vf3d.serving.config import SERVE_PRESETS

    config = config_lib.preset(SERVE_PRESETS, "debug")
    log(
        f"vf3d hostile-load benchmark ({mode_name}): {args.clients} clients, {seconds:g} s, at most {args.max_requests} requests, "
        f"40 MP PNG uploads, debug preset (max_concurrent_decodes {config.max_concurrent_decodes}, max_inflight_requests "
        f"{config.max_inflight_requests}, max_queued_requests ingress/model/mesh {config.ingress.max_queued_requests}/"
        f"{config.model.max_queued_requests}/{config.mesh.max_queued_requests}), {os.cpu_count()} CPU core(s)"
    )
    png = base_png()
    log(f"upload: {SIZE[0]}x{SIZE[1]} PNG, {len(png) / 1e6:.2f} MB on the wire")
    headers = {"Authorization": "Bearer bench-key"}
    records: list[dict[str, Any]] = []
    memory: dict[str, dict[str, float]] = {}
    health_after: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="vf3d-bench-hostile-") as scratch:
        torch.manual_seed(SEED)
        model_dir = Path(scratch) / "debug-reconstructor"
        Reconstructor(config_lib.preset(RECONSTRUCTOR_PRESETS, "debug")).save_pretrained(model_dir)
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        try:
            port = free_port()
            serve.start(
                http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": config.request_timeout_s},
                logging_config={"log_level": "WARNING"},
            )
            logging.getLogger("ray.serve").setLevel(logging.WARNING)
            serve.run(build_application(model_dir, config), name="hostile", route_prefix="/")
            url = f"http://127.0.0.1:{port}"
            warm = requests.post(
                url + "/v1/image-to-3d", data=unique(png, -1), params={"mesh_resolution": 32}, headers=headers, timeout=CLIENT_TIMEOUT_S
            )
            log(f"endpoint up at {url}; warm-up request: {warm.status_code}")
            pids = process_ids()
            missing = set(DEPLOYMENTS) - set(pids)
            if missing:
                raise SystemExit(f"could not find the processes of {sorted(missing)} among this process's descendants")
            for name, pid in pids.items():
                memory[name] = {"pid": pid, "rss_before_mb": status_mb(pid, "VmRSS"), "peak_reset": reset_peak(pid)}
            log(f"load: {args.clients} clients for {seconds:g} s")
            records = load(url, headers, png, args.clients, seconds, args.max_requests)
            log(f"{len(records)} requests done")
            for name, pid in pids.items():
                memory[name].update(peak_mb=status_mb(pid, "VmHWM"), rss_after_mb=status_mb(pid, "VmRSS"))
            time.sleep(2)
            response = requests.get(url + "/healthz", timeout=60)
            health_after = {
                "status_code": response.status_code,
                **(response.json() if response.headers.get("content-type") == "application/json" else {}),
            }
        finally:
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
    log("Serve and the Ray cluster are shut down")

    statuses: dict[str, Counter] = defaultdict(Counter)
    latencies: dict[str, list[float]] = defaultdict(list)
    for record in records:
        statuses[record["kind"]][record["status"]] += 1
        key = record["kind"] if record["status"] == "200" else f"refused ({record['status']})"
        latencies[key].append(record["ms"])
    non_json = sum(1 for record in records if record["status"] != "200" and not record["json"])
    shed = [record for record in records if record["status"] == "503"]
    shed_with_retry = sum(1 for record in shed if record["retry_after"])
    kinds = sorted({record["kind"] for record in records})
    lines = ["| kind | requests | status counts | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    for kind in kinds:
        counts = ", ".join(f"{status}: {count}" for status, count in sorted(statuses[kind].items()))
        lines.append(
            f"| {kind} | {sum(statuses[kind].values())} | {counts} | {percentile(latencies[kind], 50)} | {percentile(latencies[kind], 99)} |"
        )
    for key in sorted(key for key in latencies if key.startswith("refused")):
        lines.append(
            f"| {key} | {len(latencies[key])} | (all kinds) | {percentile(latencies[key], 50)} | {percentile(latencies[key], 99)} |"
        )
    memory_lines = ["| process | RSS before MB | peak RSS during load MB | RSS after MB |", "|---|---|---|---|"]
    memory_lines += [
        f"| {name} | {figures['rss_before_mb']:.0f} | {figures['peak_mb']:.0f}{'' if figures['peak_reset'] else ' (peak since start)'} | {figures['rss_after_mb']:.0f} |"
        for name, figures in memory.items()
    ]
    rows = [
        Row(
            f"{name} RSS MB (before load vs peak under load)",
            f"{figures['rss_before_mb']:.0f}",
            f"{figures['peak_mb']:.0f}",
            f"{figures['peak_mb'] / figures['rss_before_mb']:.2f}×",
            "bounded (no target)",
        )
        for name, figures in memory.items()
    ]
    ok = [record["ms"] for record in records if record["status"] == "200"]
    rows.append(
        Row(
            "p50 latency ms (200s vs refusals)",
            percentile(ok, 50),
            percentile([r["ms"] for r in records if r["status"] != "200"], 50),
            "—",
            "information",
        )
    )
    rows.append(Row("requests answered 200 vs refused", str(len(ok)), str(len(records) - len(ok)), "—", "no 500s, every refusal JSON"))
    wall = time.perf_counter() - BENCH_START
    health_line = f"{health_after.get('status_code')} {health_after.get('status', health_after.get('error', ''))}"
    print(
        f"\n## vf3d hostile-load benchmark ({mode_name}: {args.clients} clients, {seconds:g} s of load, {wall:.0f} s in all)\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(memory_lines)
        + "\n\n"
        + markdown_table(rows)
        + "\n\n"
        + f"Refusals not in JSON: {non_json}; 503s with Retry-After: {shed_with_retry}/{len(shed)}; "
        f"500s: {sum(1 for record in records if record['status'] == '500')}; GET /healthz after the load: {health_line}.\n",
        flush=True,
    )
    if args.json:
        write_json(
            args.json,
            {
                "mode": mode_name,
                "clients": args.clients,
                "seconds": seconds,
                "max_requests": args.max_requests,
                "upload": {"size": SIZE, "bytes": len(png)},
                "cpu_count": os.cpu_count(),
                "wall_seconds": wall,
                "statuses": {kind: dict(counter) for kind, counter in statuses.items()},
                "latency_ms": {
                    key: {"p50": percentile(values, 50), "p99": percentile(values, 99), "count": len(values)}
                    for key, values in latencies.items()
                },
                "memory_mb": memory,
                "non_json_refusals": non_json,
                "shed_with_retry_after": shed_with_retry,
                "shed": len(shed),
                "health_after": health_after,
                "errors": Counter(record["error"] for record in records if record["error"]).most_common(10),
            },
            rows,
        )


if __name__ == "__main__":
    main()
