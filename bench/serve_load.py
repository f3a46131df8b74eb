"""Serving benchmark: the image-to-3D endpoint under bounded load, with request batching vs without.

What it measures (side by side, in one run):
  One private local Ray cluster (4 logical CPUs) runs Ray Serve with TWO applications built by
  `vf3d.serving.app.build_application` from the same saved reconstructor (--model-preset, default
  `debug`: a seeded random model, as the serve tests use; `small` for a heavier one) and the `debug`
  serve preset (one ingress, one model and one mesh replica each, fractional CPUs):
    A. `/unbatched`: the preset with `max_batch_size=1`: every image is its own forward pass.
    B. `/batched`:   the preset with `max_batch_size=--batch-size` (default 8; the preset's own is 4)
                     and its `batch_wait_timeout_s` (0.05 s): `@serve.batch` gathers the images
                     that reach the model replica within that window into one forward pass.
  Everything else (replica sizes, `model.max_ongoing_requests`, raised to at least the batch size,
  limits, mesh settings) is identical in both, so the two differ in the batch size alone.

  Bounded load (a closed loop): C client threads, one `requests.Session` each, send
  `POST /v1/image-to-3d?mesh_resolution=32` (--mesh-resolution) back to back until the round's
  requests are done: 8 per client, at least 16 (--quick: 4 per client, at least 8). Each request
  is timed from send to the full response on the client; a round's requests/s is its successful
  responses over its wall time (first send to last response). For each concurrency level
  (--concurrency, default 1 4 8) the two applications take turns, ABBA (2 rounds each; --quick: 1),
  so load from elsewhere on the machine falls on both. Per (mode, concurrency) the table reports
  requests/s over all its rounds, p50 and p99 of the pooled latencies (with 2 × 16 requests at
  C=1, p99 is in effect the slowest request), the mean batch the model replica actually formed
  (`images_encoded` / `batches` deltas of `GET /healthz` around each round) and failures. The
  summary rows give batched/unbatched ratios at each concurrency (B/A: > 1 for requests/s and
  < 1 for latency are batching's gains).

Fairness:
  - Every request carries image bytes the application has not seen: crops of scikit-image's
    photos at distinct offsets, PNG-encoded before any timing. The ingress caches triplanes by
    image hash, so a repeated image would skip the model. Both applications get the same images in
    the same order (each has its own ingress and cache), so both do the same work. Responses
    served from the cache are counted and reported (expected 0).
  - Every response must be 200; anything else (or a client error) is counted as a failure and its
    first messages are printed, never dropped silently. Latency percentiles cover successes only.
  - Both applications are warmed up (first forward passes, first meshes) before any round.
  - The client threads run on the same machine as the server and share its cores, in both modes.

What to expect, and why (2 CPU cores, the `debug` preset): batching pays off where one forward
pass of N images costs about as much as one of a single image, i.e. on a GPU with spare width.
On a CPU the model replica runs one torch thread (Ray sets OMP_NUM_THREADS from its 0.5 CPU), so a
batch of N costs up to N single passes, and the forward is only part of a request: decoding and
background estimation on the ingress and marching cubes on the single mesh replica run once per
request, batched or not. Measured once here (one torch thread, in-process, outside Serve): the
`debug` model encodes 1 / 4 / 8 images in about 5 / 11 / 18 ms, while a mesh at resolution 32
takes about 125 ms and decoding a crop about 9 ms, so the model is a few percent of a request;
the `small` model takes about 1.1 / 4.3 / 9.0 s (no gain from batching on the CPU) next to a
350 ms mesh. So on the CPU the requests/s ratio may be near 1, and at C=1 the batched
application's latency carries up to `batch_wait_timeout_s` of waiting for a batch that never
fills (nothing else is in flight). Note also that `@serve.batch` closes a batch
`batch_wait_timeout_s` after its first request and starts gathering the next one while the
current one still runs (ray/serve/batching.py, `_process_batches`), so requests that reach the
model staggered (they pass through decoding first) form small batches even at C=8; the "mean
batch formed" column shows how full they really were. The table says what was measured; nothing
asserts a timing, and targets are printed as information only. Compare ratios, not absolute
numbers; the 1-minute load average is printed at both ends and after every round (the host may
be shared: rounds alternate so that such load falls on both applications).

Run (from the repository root):
  python bench/serve_load.py                    # default; about 2-2.5 minutes on 2 CPU cores (35-65 s of it Ray/Serve start-up)
  python bench/serve_load.py --quick            # smoke test; about 1.5-2 minutes
  python bench/serve_load.py --json bench-serve-load.json
  python bench/serve_load.py --model-preset small --quick   # 68M-parameter model; about 4 minutes
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import socket
import statistics
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from report import BENCH_START, Row, log, markdown_table, write_json

SEED = 0
CROP_SIZE = 256
"""Side of the square photo crops sent as images (pixels)."""
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
MODES = ("unbatched", "batched")
"""A then B in the summary rows; their route prefixes are /unbatched and /batched."""
CLIENT_TIMEOUT_S = 300.0
HEALTH_TIMEOUT_S = 60.0
ERRORS_SHOWN = 3
"""Failure messages printed per round (all are counted, and kept in the JSON)."""


@dataclass
class Settings:
    """What differs between the default run and --quick."""

    requests_per_client: int
    min_requests: int
    rounds: int
    """Rounds per application at each concurrency level (they alternate ABBA...)."""
    warmup_requests: int
    """Sent to each application before timing (half one by one, half concurrently)."""

    def requests(self, concurrency: int) -> int:
        """Requests in one round at `concurrency` clients."""
        return max(self.requests_per_client * concurrency, self.min_requests)


DEFAULT = Settings(requests_per_client=8, min_requests=16, rounds=2, warmup_requests=8)
QUICK = Settings(requests_per_client=4, min_requests=8, rounds=1, warmup_requests=4)


@dataclass
class RoundResult:
    """One closed-loop round of one application at one concurrency level."""

    mode: str
    concurrency: int
    round_index: int
    requests: int
    wall_seconds: float
    latencies_ms: list[float]
    """Of the successful (200) responses, in completion order."""
    failures: int
    statuses: dict[str, int]
    errors: list[str]
    cache_hits: int
    images_encoded: int
    batches: int
    load_before: float
    load_after: float
    health: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return len(self.latencies_ms) / self.wall_seconds if self.wall_seconds > 0 else float("nan")

    @property
    def mean_batch(self) -> float:
        return self.images_encoded / self.batches if self.batches else float("nan")


# ---------------------------------------------------------------------------------------------
# Images: distinct PNG bytes, encoded before timing
# ---------------------------------------------------------------------------------------------


def distinct_images(count: int) -> list[bytes]:
    """`count` PNGs of CROP_SIZE² crops of scikit-image's photos, all with different bytes (the
    crops move across each photo in steps of a few pixels, photos taking turns)."""
    import skimage.data
    from PIL import Image

    photos = [getattr(skimage.data, name)()[..., :3] for name in PHOTOS]
    images: list[bytes] = []
    seen: set[str] = set()
    index = 0
    while len(images) < count:
        photo = photos[index % len(photos)]
        step = index // len(photos)
        height, width = photo.shape[0] - CROP_SIZE + 1, photo.shape[1] - CROP_SIZE + 1
        top, left = (step * 5) % height, (step * 11) % width
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(photo[top : top + CROP_SIZE, left : left + CROP_SIZE])).save(buffer, format="PNG")
        data = buffer.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        if digest not in seen:
            seen.add(digest)
            images.append(data)
        index += 1
        if index > 50 * count + 1000:
            raise RuntimeError(f"could not make {count} distinct crops of {CROP_SIZE}² from {PHOTOS}")
    return images


# ---------------------------------------------------------------------------------------------
# The two applications on one private Serve instance
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def save_model(directory: Path, model_preset: str) -> Path:
    """A seeded random reconstructor of `model_preset`, saved as a model directory."""
    import torch

    from vf3d import config as config_lib
    from vf3d.models.reconstructor import Reconstructor
    from vf3d.models.reconstructor.config import RECONSTRUCTOR_PRESETS

    torch.manual_seed(SEED)
    path = directory / f"{model_preset}-reconstructor"
    Reconstructor(config_lib.preset(RECONSTRUCTOR_PRESETS, model_preset)).save_pretrained(path)
    return path


def serve_configs(batch_size: int, batch_wait_s: float | None) -> dict[str, Any]:
    """The `debug` serve preset per mode, differing only in max_batch_size."""
    from vf3d import config as config_lib
    from vf3d.serving.config import SERVE_PRESETS

    configs = {}
    for mode in MODES:
        config = config_lib.preset(SERVE_PRESETS, "debug")
        config.max_batch_size = batch_size if mode == "batched" else 1
        # The same replica limits in both: enough in flight on the model replica for a full batch.
        config.model.max_ongoing_requests = max(config.model.max_ongoing_requests, batch_size)
        if batch_wait_s is not None:
            config.batch_wait_timeout_s = batch_wait_s
        configs[mode] = config.validate()
    return configs


def health(session, url: str) -> dict[str, Any]:
    response = session.get(url + "/healthz", timeout=HEALTH_TIMEOUT_S)
    if response.status_code != 200:
        raise RuntimeError(f"GET {url}/healthz answered {response.status_code}: {response.text[:300]}")
    return response.json()


# ---------------------------------------------------------------------------------------------
# Closed-loop load
# ---------------------------------------------------------------------------------------------


def closed_loop(url: str, images: list[bytes], concurrency: int, mesh_resolution: int) -> dict[str, Any]:
    """Send every image in `images` once to `url`/v1/image-to-3d from `concurrency` threads, each
    taking the next image as soon as its previous response is in; latencies and outcomes."""
    import requests

    next_index = 0
    lock = threading.Lock()
    start_gate = threading.Barrier(concurrency + 1)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    errors: list[str] = []
    cache_hits = 0
    finished: list[float] = []

    def client() -> None:
        nonlocal next_index, cache_hits
        with requests.Session() as session:
            start_gate.wait()
            while True:
                with lock:
                    if next_index >= len(images):
                        break
                    data = images[next_index]
                    next_index += 1
                sent = time.perf_counter()
                try:
                    response = session.post(
                        url + "/v1/image-to-3d", data=data, params={"mesh_resolution": mesh_resolution}, timeout=CLIENT_TIMEOUT_S
                    )
                    status, body, hit = (
                        str(response.status_code),
                        (response.text[:200] if response.status_code != 200 else ""),
                        response.headers.get("x-vf3d-triplane-cache") == "hit",
                    )
                except Exception as error:  # a client-side failure is a failure too, counted like a bad status
                    status, body, hit = type(error).__name__, str(error)[:200], False
                elapsed_ms = (time.perf_counter() - sent) * 1000
                with lock:
                    statuses[status] += 1
                    cache_hits += hit
                    if status == "200":
                        latencies.append(elapsed_ms)
                    else:
                        errors.append(f"{status}: {body}")
                    finished.append(time.perf_counter())

    threads = [threading.Thread(target=client, name=f"client-{index}", daemon=True) for index in range(concurrency)]
    for thread in threads:
        thread.start()
    start_gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = (max(finished) if finished else time.perf_counter()) - started
    return {"latencies_ms": latencies, "statuses": dict(statuses), "errors": errors, "cache_hits": cache_hits, "wall_seconds": wall}


def run_round(
    session, base_url: str, mode: str, images: list[bytes], concurrency: int, round_index: int, mesh_resolution: int
) -> RoundResult:
    url = f"{base_url}/{mode}"
    load_before = os.getloadavg()[0]
    before = health(session, url)
    outcome = closed_loop(url, images, concurrency, mesh_resolution)
    after = health(session, url)
    load_after = os.getloadavg()[0]
    latencies = outcome["latencies_ms"]
    return RoundResult(
        mode=mode,
        concurrency=concurrency,
        round_index=round_index,
        requests=len(images),
        wall_seconds=outcome["wall_seconds"],
        latencies_ms=latencies,
        failures=len(images) - len(latencies),
        statuses=outcome["statuses"],
        errors=outcome["errors"],
        cache_hits=outcome["cache_hits"],
        images_encoded=after["images_encoded"] - before["images_encoded"],
        batches=after["batches"] - before["batches"],
        load_before=load_before,
        load_after=load_after,
        health={key: after.get(key) for key in ("device", "largest_batch", "mean_batch", "replica", "cache_entries")},
    )


def warm_up(session, base_url: str, images: dict[str, list[bytes]], count: int, concurrency: int, mesh_resolution: int) -> None:
    """First forward passes and meshes of both applications, one by one then concurrently."""
    for mode in MODES:
        serial, parallel = images[mode][: count // 2], images[mode][count // 2 :]
        outcomes = [
            closed_loop(f"{base_url}/{mode}", serial, 1, mesh_resolution),
            closed_loop(f"{base_url}/{mode}", parallel, concurrency, mesh_resolution),
        ]
        failed = sum(sum(n for status, n in outcome["statuses"].items() if status != "200") for outcome in outcomes)
        errors = [error for outcome in outcomes for error in outcome["errors"]]
        log(f"warm-up {mode}: {count - failed}/{count} ok" + (f"; first failures: {errors[:ERRORS_SHOWN]}" if failed else ""))
        log(f"  /healthz {mode}: {health(session, f'{base_url}/{mode}')}")


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------


def summarize(rounds: list[RoundResult]) -> dict[str, Any]:
    """Pooled figures of the rounds of one (mode, concurrency)."""
    latencies = [value for result in rounds for value in result.latencies_ms]
    wall = sum(result.wall_seconds for result in rounds)
    encoded, batches = sum(result.images_encoded for result in rounds), sum(result.batches for result in rounds)
    return {
        "requests": sum(result.requests for result in rounds),
        "ok": len(latencies),
        "failures": sum(result.failures for result in rounds),
        "cache_hits": sum(result.cache_hits for result in rounds),
        "requests_per_s": len(latencies) / wall if wall > 0 else float("nan"),
        "round_rates": [result.rate for result in rounds],
        "p50_ms": float(np.percentile(latencies, 50)) if latencies else float("nan"),
        "p99_ms": float(np.percentile(latencies, 99)) if latencies else float("nan"),
        "mean_ms": statistics.fmean(latencies) if latencies else float("nan"),
        "images_encoded": encoded,
        "batches": batches,
        "mean_batch": encoded / batches if batches else float("nan"),
        "loads": [result.load_after for result in rounds],
    }


def detail_table(summaries: dict[tuple[str, int], dict[str, Any]]) -> str:
    lines = [
        "| mode | concurrency | requests (ok / sent) | failures | requests/s (per round) | p50 ms | p99 ms | mean batch formed | 1-min load after rounds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (mode, concurrency), summary in summaries.items():
        rates = ", ".join(f"{rate:.2f}" for rate in summary["round_rates"])
        loads = ", ".join(f"{load:.2f}" for load in summary["loads"])
        lines.append(
            f"| {mode} | {concurrency} | {summary['ok']} / {summary['requests']} | {summary['failures']} | "
            f"{summary['requests_per_s']:.2f} ({rates}) | {summary['p50_ms']:.0f} | {summary['p99_ms']:.0f} | "
            f"{summary['mean_batch']:.2f} | {loads} |"
        )
    return "\n".join(lines)


def ratio(b: float, a: float) -> str:
    """B/A as "1.23× (B/A)", or "n/a" where A is 0 or missing (e.g. every request failed)."""
    return f"{b / a:.2f}× (B/A)" if a and np.isfinite(a) and np.isfinite(b) else "n/a"


def ratio_rows(
    summaries: dict[tuple[str, int], dict[str, Any]], concurrencies: list[int], batch_size: int, batch_wait_s: float
) -> list[Row]:
    rows = []
    for concurrency in concurrencies:
        a, b = summaries[("unbatched", concurrency)], summaries[("batched", concurrency)]
        rate_note = "> 1 is batching's gain; about 1 possible on a CPU (a batch of N costs ~N passes)"
        if concurrency == 1:
            rate_note = f"≤ 1 expected: nothing to batch with, and each request waits up to {batch_wait_s:g}s for a batch"
        rows += [
            Row(
                f"requests/s at concurrency {concurrency} (unbatched vs batched, max batch {batch_size})",
                f"{a['requests_per_s']:.2f}",
                f"{b['requests_per_s']:.2f}",
                ratio(b["requests_per_s"], a["requests_per_s"]),
                rate_note,
            ),
            Row(
                f"p50 latency ms at concurrency {concurrency} (unbatched vs batched)",
                f"{a['p50_ms']:.0f}",
                f"{b['p50_ms']:.0f}",
                ratio(b["p50_ms"], a["p50_ms"]),
                "< 1 is batching's gain",
            ),
            Row(
                f"p99 latency ms at concurrency {concurrency} (unbatched vs batched)",
                f"{a['p99_ms']:.0f}",
                f"{b['p99_ms']:.0f}",
                ratio(b["p99_ms"], a["p99_ms"]),
                "information",
            ),
            Row(
                f"mean batch formed at concurrency {concurrency} (unbatched vs batched)",
                f"{a['mean_batch']:.2f}",
                f"{b['mean_batch']:.2f}",
                "—",
                f"A is 1 by construction; B ≤ min({concurrency}, {batch_size})",
            ),
        ]
    return rows


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds (smoke test)")
    parser.add_argument("--model-preset", default="debug", help="reconstructor preset of the served model (default debug; e.g. small)")
    parser.add_argument("--batch-size", type=int, default=8, help="max_batch_size of the batched application (default 8)")
    parser.add_argument(
        "--batch-wait-s", type=float, default=None, help="batch_wait_timeout_s of both applications (default: the debug serve preset's)"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8], help="client threads per level (default 1 4 8)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per application at each level (default 2; --quick 1)")
    parser.add_argument("--mesh-resolution", type=int, default=32, help="mesh_resolution query parameter of every request (default 32)")
    parser.add_argument("--json", type=Path, help="also write the summary and raw numbers as JSON here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.batch_size < 2:
        raise SystemExit("--batch-size must be >= 2 (the unbatched application is the batch-size-1 one)")
    if min(args.concurrency) < 1:
        raise SystemExit("--concurrency levels must be >= 1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private cluster needs no token
    mode_name = "quick" if args.quick else "default"
    settings = QUICK if args.quick else DEFAULT
    if args.rounds is not None:
        settings.rounds = args.rounds
    configs = serve_configs(args.batch_size, args.batch_wait_s)
    batch_wait_s = configs["batched"].batch_wait_timeout_s
    plan = [(concurrency, round_index) for concurrency in args.concurrency for round_index in range(settings.rounds)]
    per_mode = settings.warmup_requests + sum(settings.requests(concurrency) for concurrency, _ in plan)
    load_start = os.getloadavg()[0]
    log(
        f"vf3d serving load benchmark ({mode_name} mode): {args.model_preset} reconstructor, debug serve preset, "
        f"unbatched (max_batch_size 1) vs batched (max_batch_size {args.batch_size}, batch_wait_timeout_s {batch_wait_s:g}), "
        f"concurrency {args.concurrency}, {settings.rounds} round(s) per application per level, "
        f"requests per round max({settings.requests_per_client}×C, {settings.min_requests}), mesh_resolution {args.mesh_resolution}, "
        f"{os.cpu_count()} CPU core(s), 1-min load average {load_start:.2f}"
    )

    log(f"encoding {per_mode} distinct {CROP_SIZE}² PNG crops (each application gets every one once)")
    pool = distinct_images(per_mode)
    warmup_images = pool[: settings.warmup_requests]
    round_images: dict[tuple[int, int], list[bytes]] = {}
    offset = settings.warmup_requests
    for concurrency, round_index in plan:
        count = settings.requests(concurrency)
        round_images[(concurrency, round_index)] = pool[offset : offset + count]
        offset += count
    log(f"{len(pool)} images, {sum(map(len, pool)) / len(pool) / 1024:.0f} KiB on average")

    import ray
    import requests
    from ray import serve

    from vf3d.serving.app import build_application

    results: list[RoundResult] = []
    deploy_seconds = float("nan")
    health_end: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="vf3d-bench-serve-") as scratch:
        model_dir = save_model(Path(scratch), args.model_preset)
        log(f"saved the seeded {args.model_preset} reconstructor to {model_dir}; starting a private local Ray cluster")
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        try:
            port = free_port()
            serve.start(
                http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": configs["batched"].request_timeout_s},
                logging_config={"log_level": "WARNING"},
            )
            logging.getLogger("ray.serve").setLevel(logging.WARNING)
            base_url = f"http://127.0.0.1:{port}"
            started = time.perf_counter()
            for mode in MODES:
                serve.run(build_application(model_dir, configs[mode]), name=mode, route_prefix=f"/{mode}")
            deploy_seconds = time.perf_counter() - started
            log(f"both applications up in {deploy_seconds:.1f}s at {base_url}/unbatched and {base_url}/batched")

            with requests.Session() as session:
                warm_up(
                    session,
                    base_url,
                    {mode: warmup_images for mode in MODES},
                    settings.warmup_requests,
                    max(args.concurrency),
                    args.mesh_resolution,
                )
                for turn, (concurrency, round_index) in enumerate(plan):
                    images = round_images[(concurrency, round_index)]
                    # ABBA: which application goes first alternates from round to round.
                    for mode in MODES if turn % 2 == 0 else tuple(reversed(MODES)):
                        result = run_round(session, base_url, mode, images, concurrency, round_index, args.mesh_resolution)
                        results.append(result)
                        latencies = result.latencies_ms
                        p50 = f"{np.percentile(latencies, 50):.0f}" if latencies else "—"
                        log(
                            f"C={concurrency} round {round_index + 1} {mode:>9}: {len(latencies)}/{result.requests} ok "
                            f"in {result.wall_seconds:.2f}s = {result.rate:.2f} req/s, p50 {p50} ms, "
                            f"{result.images_encoded} images in {result.batches} batches (mean {result.mean_batch:.2f}), "
                            f"cache hits {result.cache_hits}, load {result.load_before:.2f} → {result.load_after:.2f}"
                        )
                        if result.failures:
                            log(f"  {result.failures} failure(s) {result.statuses}; first: {result.errors[:ERRORS_SHOWN]}")
                health_end = {mode: health(session, f"{base_url}/{mode}") for mode in MODES}
        finally:
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
        log("Serve and the Ray cluster are shut down")

    summaries = {
        (mode, concurrency): summarize([result for result in results if result.mode == mode and result.concurrency == concurrency])
        for concurrency in args.concurrency
        for mode in MODES
    }
    rows = ratio_rows(summaries, args.concurrency, args.batch_size, batch_wait_s)
    failures = sum(summary["failures"] for summary in summaries.values())
    cache_hits = sum(summary["cache_hits"] for summary in summaries.values())
    wall_seconds, load_end = time.perf_counter() - BENCH_START, os.getloadavg()[0]
    device = health_end.get("batched", {}).get("device", "?")
    print(
        f"\n## vf3d serving load benchmark ({mode_name}, {args.model_preset} reconstructor on {device}, "
        f"mesh_resolution {args.mesh_resolution}, {wall_seconds:.0f}s, load average {load_start:.2f} → {load_end:.2f})\n\n"
        f"{detail_table(summaries)}\n\n{markdown_table(rows)}\n\n"
        f"A = /unbatched (max_batch_size 1), B = /batched (max_batch_size {args.batch_size}, batch_wait_timeout_s {batch_wait_s:g}); "
        f"closed loop of C clients, {settings.rounds} round(s) per application per level, alternating; requests/s = successful "
        f"responses over summed round wall time; p50/p99 over the pooled successful latencies (client-side, send to last byte); "
        f"mean batch = images encoded / forward passes on the model replica. Failures: {failures}; "
        f"triplane-cache hits: {cache_hits} (0 expected: every image is new to its application).\n",
        flush=True,
    )
    if args.json:
        write_json(
            args.json,
            {
                "mode": mode_name,
                "model_preset": args.model_preset,
                "batch_size": args.batch_size,
                "batch_wait_timeout_s": batch_wait_s,
                "mesh_resolution": args.mesh_resolution,
                "concurrency": args.concurrency,
                "settings": asdict(settings),
                "serve_configs": {mode: asdict(config) for mode, config in configs.items()},
                "cpu_count": os.cpu_count(),
                "deploy_seconds": deploy_seconds,
                "wall_seconds": wall_seconds,
                "load_average": [load_start, load_end],
                "failures": failures,
                "cache_hits": cache_hits,
                "health_end": health_end,
                "summaries": [{"mode": mode, "concurrency": concurrency, **summary} for (mode, concurrency), summary in summaries.items()],
                "rounds": [{**asdict(result), "rate": result.rate, "mean_batch": result.mean_batch} for result in results],
            },
            rows,
        )


if __name__ == "__main__":
    main()
