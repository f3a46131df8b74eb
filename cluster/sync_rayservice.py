"""Keep cluster/kuberay/rayservice.yaml's serveConfigV2 equal to serve/config.yaml.

serve/config.yaml is the one Serve config (`serve run`, `serve deploy`, `vf3d serve`); the
RayService embeds it verbatim as the block string `serveConfigV2: |`. After editing
serve/config.yaml, run from the repository root:

    python cluster/sync_rayservice.py            # rewrite the block in place
    python cluster/sync_rayservice.py --check    # exit 1 if the block is out of date

Only the block is rewritten; the rest of rayservice.yaml (comments included) is kept as it is.
tests/unit/test_cluster_configs.py fails, naming this script, when the two differ.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SERVE_CONFIG = REPO / "serve" / "config.yaml"
RAYSERVICE = REPO / "cluster" / "kuberay" / "rayservice.yaml"

_KEY = re.compile(r"^(?P<indent> *)serveConfigV2: *\|[-+]? *$")


def render(rayservice_text: str, serve_text: str) -> str:
    """Return `rayservice_text` with its `serveConfigV2: |` block replaced by `serve_text`.

    The block is the run of lines after the key that are blank or indented deeper than the key;
    blank lines at its end stay outside it (they separate it from what follows).
    """
    lines = rayservice_text.splitlines()
    starts = [i for i, line in enumerate(lines) if _KEY.match(line)]
    if len(starts) != 1:
        raise ValueError(f"expected one `serveConfigV2: |` line in the RayService, found {len(starts)}")
    start = starts[0]
    key_indent = len(_KEY.match(lines[start]).group("indent"))
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip(" ")) > key_indent):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1

    serve_lines = serve_text.rstrip("\n").splitlines()
    first = next((line for line in serve_lines if line.strip()), "")
    if first[:1].isspace():
        raise ValueError("serve/config.yaml's first line is indented: a YAML block string cannot start that way")
    indent = " " * (key_indent + 2)
    block = [indent + line if line.strip() else "" for line in serve_lines]
    out = "\n".join(lines[: start + 1] + block + lines[end:]) + "\n"

    # The rewritten manifest must carry serve/config.yaml exactly.
    document = yaml.safe_load(out)
    if document["spec"]["serveConfigV2"].rstrip("\n") != serve_text.rstrip("\n"):
        raise ValueError("rewriting serveConfigV2 did not reproduce serve/config.yaml (unusual whitespace?)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether the block is up to date")
    args = parser.parse_args(argv)
    current = RAYSERVICE.read_text()
    wanted = render(current, SERVE_CONFIG.read_text())
    if current == wanted:
        print(f"{RAYSERVICE.relative_to(REPO)}: serveConfigV2 matches {SERVE_CONFIG.relative_to(REPO)}")
        return 0
    if args.check:
        print(
            f"{RAYSERVICE.relative_to(REPO)}: serveConfigV2 differs from {SERVE_CONFIG.relative_to(REPO)}; "
            "run `python cluster/sync_rayservice.py`",
            file=sys.stderr,
        )
        return 1
    RAYSERVICE.write_text(wanted)
    print(f"rewrote serveConfigV2 in {RAYSERVICE.relative_to(REPO)} from {SERVE_CONFIG.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
