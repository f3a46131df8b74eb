"""What a Ray worker process pays in imports before it does any work, by kind of process, side by
side in one run.

Why: on a small machine (and in `make test`), a short run's CPU goes mostly to starting processes.
Every actor of a Ray Data pool, every Ray Train worker (per attempt) and every Serve replica is a
fresh interpreter that imports its libraries before its first batch. This prints what each kind
costs, what a first-frame actor that only recentres given images saves by importing the
text-to-image stack (diffusers, transformers) only for a prompt without an image
(`vf3d.synthesis.stages.FirstFrames`), and what a mask actor saves by not importing torch
(`ForegroundMasks`, whose heuristics are NumPy and SciPy).

What it measures: each case is a fresh `python -c` running that kind's imports; its user + system
CPU-seconds come from the kernel's accounting of the finished child (getrusage), so other load on
the machine changes wall time but hardly these numbers. Rounds run every case in one order, then
the reverse (--quick: one round). Medians. Nothing asserts a timing.

Run (from the repository root, Linux):
  python bench/process_imports.py          # about 3 minutes on 2 cores
  python bench/process_imports.py --quick
  python bench/process_imports.py --json bench-results/process_imports.json
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from report import Row, finish, log

BARE_RAY = "import ray"
"""What every Ray worker process imports: the baseline each kind is compared with."""

KINDS = {
    "Ray Data map worker (ray.data)": "import ray, ray.data",
    "torch": "import ray, torch",
    "Ray Train torch worker (ray.train.torch)": "import ray, ray.train.torch",
    "video model (diffusers' Wan VAE and transformer)": "import ray, torch\nfrom diffusers import AutoencoderKLWan, WanTransformer3DModel",
    "reconstructor encoder (transformers' DINOv2)": "import ray, torch\nfrom transformers import Dinov2Model",
    "DeepSpeed's ZeRO optimizer check (its Muon module, torch.compile)": "import ray, torch\n"
    "import deepspeed.runtime.zero.muon.muon_optimizer",
}
"""Each kind of worker process: the imports it makes before its first batch."""

FIRST_FRAMES = """
import io, json
import numpy as np
from PIL import Image
from skimage import data
from vf3d import config as config_lib
from vf3d.synthesis.config import SYNTHESIZE_PRESETS
from vf3d.synthesis.stages import FirstFrames

config = config_lib.to_dict(config_lib.preset(SYNTHESIZE_PRESETS, "debug"))
buffer = io.BytesIO()
Image.fromarray(data.chelsea()).save(buffer, format="PNG")
columns = {"id": "a", "prompt": "a cat", "image": buffer.getvalue(), "seed": 1, "elevation": 10.0,
           "error": "", "error_stage": "", "trace": "{}"}
stage = FirstFrames(config, OUT, resolution=32)
assert stage({name: np.array([value], dtype=object) for name, value in columns.items()})["first_frame_given"][0]
"""
"""A first-frame actor's start and its first batch, one given image (no text-to-image needed)."""

MASKS = """
import numpy as np
from vf3d import config as config_lib
from vf3d.synthesis.config import SYNTHESIZE_PRESETS
from vf3d.synthesis.stages import ForegroundMasks

config = config_lib.to_dict(config_lib.preset(SYNTHESIZE_PRESETS, "debug"))
frames = np.full((2, 16, 64, 64, 3), 255, np.uint8)
frames[:, :, 16:48, 16:48] = 40
batch = {"id": np.array(["a", "b"]), "frames": frames, "trace": np.array(["{}", "{}"]),
         "error": np.array(["", ""]), "error_stage": np.array(["", ""])}
assert len(ForegroundMasks(config, OUT)(batch)["masks"]) == 2
"""
"""A mask actor's start and its first batch (two 16-view orbits), no probe configured."""
MASKS_BEFORE = "import torch, vf3d.synthesis.quality\n"
"""What a mask actor imported before its heuristics moved out of vf3d.synthesis.quality and the
stages' shared machinery stopped importing torch for it."""


def child_cpu_seconds(code: str) -> float:
    """User + system CPU-seconds of a fresh interpreter running `code` (it must succeed): the
    kernel's count for this process's finished children, before and after."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"bench/process_imports.py: error: this case failed:\n{code}\n{result.stderr[-2000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds (alternating order)")
    parser.add_argument("--json", type=Path, help="also write the summary and raw numbers as JSON here")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="vf3d-bench-imports-") as out:
        first_frames = FIRST_FRAMES.replace("OUT", repr(out))
        cases = {
            BARE_RAY: BARE_RAY,
            **KINDS,
            "first-frame actor, given image, as now": first_frames,
            "first-frame actor, given image, importing the text-to-image stack": first_frames + "import diffusers, transformers\n",
            "mask actor, as now": MASKS.replace("OUT", repr(out)),
            "mask actor, importing torch and the probe's module as before": MASKS_BEFORE + MASKS.replace("OUT", repr(out)),
        }
        samples: dict[str, list[float]] = {name: [] for name in cases}
        rounds = 1 if args.quick else args.rounds
        log(f"vf3d process-imports benchmark: {len(cases)} cases, {rounds} round(s), each a fresh interpreter")
        for index in range(rounds):
            order = list(cases) if index % 2 == 0 else list(reversed(cases))
            for name in order:
                samples[name].append(child_cpu_seconds(cases[name]))
            log(f"round {index + 1}: " + ", ".join(f"{name[:24]} {samples[name][-1]:.1f}" for name in cases))
    median = {name: statistics.median(values) for name, values in samples.items()}
    rows = [
        Row(
            f"CPU-s of a process importing: {name} (A) vs a bare Ray worker (B)",
            f"{median[name]:.1f}",
            f"{median[BARE_RAY]:.1f}",
            f"{median[name] / median[BARE_RAY]:.1f}× (A/B)",
            "what each such process pays before its first batch",
        )
        for name in KINDS
    ]
    before, now = (
        median["first-frame actor, given image, importing the text-to-image stack"],
        median["first-frame actor, given image, as now"],
    )
    rows.append(
        Row(
            "CPU-s of a first-frame actor's start and first batch, one given image: with the text-to-image stack (A) vs as now (B)",
            f"{before:.1f}",
            f"{now:.1f}",
            f"{before / now:.2f}× less (A/B)",
            "> 1: image-only actors skip diffusers and transformers",
        )
    )
    before, now = median["mask actor, importing torch and the probe's module as before"], median["mask actor, as now"]
    rows.append(
        Row(
            "CPU-s of a mask actor's start and first batch (two orbits): importing torch as before (A) vs as now (B)",
            f"{before:.1f}",
            f"{now:.1f}",
            f"{before / now:.2f}× less (A/B)",
            "> 1: mask actors compute with NumPy and SciPy alone",
        )
    )
    finish(
        "vf3d process-imports benchmark",
        rows,
        f"Medians over {rounds} round(s); CPU-seconds of each finished child process (getrusage).",
        load_start,
        args.json,
        "quick" if args.quick else "full",
        samples=samples,
    )


if __name__ == "__main__":
    main()
