"""`vf3d synthesize` end to end on a local Ray cluster with debug models: exactly-once accounting,
bad inputs as error rows, a killed actor, infrastructure faults, and an elastic generation pool.

The killed-driver run (SIGKILL, then the same command again) is
test_object_storage.py::test_killed_synthesis_on_s3_rerun_ends_exactly_once: the same code path
on the harder store, asserting everything a local run would (the rerun's pending count, every id in
exactly one table once, no partial file); the local store's lease takeover and publish-after-kill
are covered by test_render_assets.py's killed run, which shares the shard writer and the lease."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vf3d import config as config_lib
from vf3d.data import shards
from vf3d.models.video.config import VIDEO_MODEL_PRESETS
from vf3d.synthesis.config import SYNTHESIZE_PRESETS

TABLES = ("orbits", "rejected", "errors")

BAD_PROMPTS = {
    "bad-empty": (b"", "prompt is empty"),
    "bad-blank": (b"   \t ", "prompt is empty"),
    "bad-long": (b"a red chair " * 200, "characters long"),
    "bad-utf8": (b"a \xff\xfe cup", "not valid UTF-8"),
    "bad-binary": (b"\x00\x01\x02 junk", "control characters"),
    "bad-null": (None, "prompt is missing"),
}


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_prompts(path: Path, good: int = 40) -> dict[str, str]:
    """50 inputs: `good` text prompts, 2 photos, 1 corrupt image, 6 bad prompts and 1 bad
    elevation. Prompts are stored as bytes so that undecodable text can be represented.
    Returns {id: expected error fragment} for the inputs that must fail."""
    from skimage import data

    subjects = [
        "a wooden chair",
        "a red sports car",
        "a ceramic mug",
        "a toy robot",
        "a potted plant",
        "a leather boot",
        "a brass lamp",
        "a teddy bear",
    ]
    rows = [
        {
            "id": f"p{index:03d}",
            "prompt": f"{subjects[index % len(subjects)]}, studio photo, white background".encode(),
            "image": None,
            "elevation": 10.0 if index % 5 == 0 else None,
        }
        for index in range(good)
    ]
    rows += [
        {"id": "img-cat", "prompt": b"a cat", "image": _png(data.chelsea()), "elevation": None},
        {"id": "img-rocket", "prompt": None, "image": _png(data.rocket()), "elevation": 20.0},
        {"id": "bad-image", "prompt": b"a vase", "image": b"\x89PNG\r\n\x1a\nnot really a png", "elevation": None},
        {"id": "bad-elevation", "prompt": b"a bowl", "image": None, "elevation": 95.0},
    ]
    rows += [{"id": identifier, "prompt": prompt, "image": None, "elevation": None} for identifier, (prompt, _) in BAD_PROMPTS.items()]
    schema = pa.schema([("id", pa.string()), ("prompt", pa.binary()), ("image", pa.binary()), ("elevation", pa.float64())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    expected = {identifier: fragment for identifier, (_, fragment) in BAD_PROMPTS.items()}
    expected.update({"bad-image": "image:", "bad-elevation": "elevation must be"})
    return expected


def table_ids(out: Path) -> dict[str, list[str]]:
    """Every id of every table, with repeats (a duplicate would show as a repeat)."""
    return {
        table: [value for file in shards.list_shard_files(out, table) for value in pq.read_table(file, columns=["id"])["id"].to_pylist()]
        for table in TABLES
    }


@pytest.fixture(scope="module")
def video_model(tmp_path_factory):
    """A debug orbit video model saved in the diffusers layout (random weights, real classes)."""
    from vf3d.models.video import build_video_pipeline

    directory = tmp_path_factory.mktemp("video-model")
    build_video_pipeline(VIDEO_MODEL_PRESETS["debug"]()).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def synthesized(ray_local, video_model, tmp_path_factory):
    """One 50-input run in which the first generation actor dies in its second batch, and, once
    each in their first batch, a generation actor raises a CUDA error and a writer an OSError
    (config-driven fault hooks). No error budget: a batch that were given up on would fail the run.

    Far more sampling steps than the debug preset make generation the slowest stage by a wide
    margin, as it is on a real cluster, so its pool has a backlog that outlasts an actor's start-up
    (tens of seconds on 2 busy cores) and grows."""
    from vf3d.synthesis.synthesize import synthesize

    root = tmp_path_factory.mktemp("synthesize")
    prompts = root / "prompts.parquet"
    expected_errors = write_prompts(prompts)
    config = config_lib.merge(
        config_lib.preset(SYNTHESIZE_PRESETS, "debug"),
        {
            "fault": {
                "kill_stage": "generate",
                "after_batches": 1,
                "cuda_error_stage": "generate",
                "os_error_stage": "write",
                "error_after_batches": 0,
            },
            "failures": {"max_errored_blocks": 0},
            "generation": {"num_inference_steps": 48},
        },
    )
    lines: list[str] = []
    with GenerationActorWatcher() as watcher:
        summary = synthesize(prompts, video_model, root / "out", config, log=lines.append)
    lines.append(f"generation actors seen alive or starting: {sorted(watcher.seen)}; pool sizes over time: {watcher.sizes}")
    return root / "out", summary, expected_errors, lines, prompts, watcher


class GenerationActorWatcher:
    """Polls Ray's actor table during a run and records every orbit-generation actor that was alive
    or being started: the pool's size as the autoscaler set it, whether or not a new actor got to
    finish a batch before the backlog was gone (on a loaded 2-core machine it may not)."""

    def __enter__(self):
        import threading

        self.seen: set[str] = set()
        self.sizes: list[int] = []
        """Generation actors alive or starting at each poll that found any (in time order)."""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self) -> None:
        # The GCS's own actor table: the public state API needs the dashboard, which the test
        # cluster does not start.
        from ray._private import state

        while not self.stop.wait(0.5):
            actors = state.actors()
            current = {
                actor_id
                for actor_id, info in actors.items()
                if "GenerateOrbits" in str(info.get("ActorClassName")) and info.get("State") != "DEAD"
            }
            if current and (not self.sizes or self.sizes[-1] != len(current)):
                self.sizes.append(len(current))
            self.seen.update(current)

    def __exit__(self, *exc_info):
        self.stop.set()
        self.thread.join(timeout=30)


def test_fifty_inputs_are_each_accounted_for_exactly_once(synthesized):
    out, summary, expected_errors, _, _, _ = synthesized
    ids = table_ids(out)
    every = [value for table in TABLES for value in ids[table]]
    assert len(every) == len(set(every)) == 50
    assert len(ids["errors"]) == len(expected_errors) and len(ids["orbits"]) + len(ids["rejected"]) == 42
    assert summary["inputs"] == 50 and summary["missing"] == 0 and summary["ids_in_two_tables"] == 0 and summary["duplicate_rows"] == 0
    assert summary["kept_total"] + summary["rejected_total"] + summary["errors_total"] == 50
    assert summary["kept_this_run"] + summary["rejected_this_run"] == summary["videos_this_run"] == 42
    assert summary["videos_per_second"] > 0 and summary["stages"]["generate"]["items"] == 42
    assert summary["stages"]["first_frame"]["items_per_actor_second"] > 0


def test_bad_inputs_become_error_rows_with_their_reason(synthesized):
    out, summary, expected_errors, _, _, _ = synthesized
    errors = {row["id"]: row for row in shards.read_table(out, table="errors").to_pylist()}
    assert set(errors) == set(expected_errors)
    for identifier, fragment in expected_errors.items():
        assert fragment in errors[identifier]["reason"], (identifier, errors[identifier]["reason"])
    assert errors["bad-image"]["stage"] == "first_frame"
    assert {errors[identifier]["stage"] for identifier in BAD_PROMPTS} == {"prepare"}
    assert summary["errors_by_stage"] == {"prepare": 7, "first_frame": 1}


def test_outputs_are_synthetic_orbit_shards_with_known_cameras(synthesized, video_model):
    from vf3d.models.video import orbit_cameras

    out, _, _, _, _, _ = synthesized
    table = pa.concat_tables([shards.read_table(out), shards.read_table(out, table="rejected").drop_columns(["reasons"])])
    shards.validate_table(table)
    rows = {row["id"]: row for row in table.to_pylist()}
    assert {row["source"] for row in rows.values()} == {"synthetic"}
    record = shards.decode_row(rows["p000"])  # elevation given: 10°
    assert record["frames"].shape == (16, 3, 32, 32) and record["masks"].shape == (16, 1, 32, 32)
    np.testing.assert_allclose(record["cameras"], orbit_cameras(16, 10.0).numpy(), atol=1e-6)
    metadata = json.loads(rows["img-rocket"]["metadata"])
    assert metadata["first_frame_given"] and metadata["elevation_given"] and rows["img-rocket"]["elevation"] == 20.0
    drawn = [
        row["elevation"]
        for identifier, row in rows.items()
        if identifier.startswith("p") and not json.loads(row["metadata"])["elevation_given"]
    ]
    assert all(0 <= value <= 30 for value in drawn) and len(set(drawn)) > 10


def test_rejected_orbits_keep_their_frames_scores_and_reasons(synthesized):
    out, summary, _, _, _, _ = synthesized
    rejected = shards.read_table(out, table="rejected")
    assert rejected.num_rows == summary["rejected_total"]
    known = {"static", "empty_foreground", "full_frame_foreground", "flicker", "probe_score"}
    for row in rejected.select(["reasons", "metadata", "frames"]).to_pylist():
        assert row["reasons"] and set(row["reasons"]) <= known and len(row["frames"]) == 16
        assert {"motion", "foreground_mean", "flicker"} <= set(json.loads(row["metadata"])["filter"])
    assert sum(summary["reject_reasons"].values()) >= summary["rejected_total"]


def test_a_killed_generation_actor_loses_nothing(synthesized):
    out, summary, _, lines, _, _ = synthesized
    assert (out / ".fault-generate.fired").is_file(), "the generation actor should have been killed mid-run"
    assert summary["missing"] == 0 and summary["errors_by_stage"].get("generate") is None
    assert summary["stages"]["generate"]["items"] == 42


def infrastructure_failures(out: Path) -> list[dict]:
    """The run's records of retried infrastructure errors (failures.jsonl), oldest first."""
    from vf3d.synthesis.failures import FAILURES_NAME

    path = out / FAILURES_NAME
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_a_cuda_error_in_generation_is_retried_not_written_as_errors(synthesized):
    out, summary, expected_errors, _, _, _ = synthesized
    assert (out / ".fault-generate-cuda.fired").is_file()
    assert [record["stage"] for record in infrastructure_failures(out) if "CUDA error" in record["error"]] == ["generate"]
    # The error rows are the bad inputs' alone, and every good input has its orbit.
    tables = table_ids(out)
    assert sorted(tables["errors"]) == sorted(expected_errors) and len(tables["orbits"] + tables["rejected"]) == 42
    assert summary["missing"] == 0 and summary["stages"]["generate"]["items"] == 42


def test_a_writer_oserror_is_retried_and_loses_nothing(synthesized):
    out, summary, _, _, _, _ = synthesized
    assert (out / ".fault-write-oserror.fired").is_file()
    assert [record["stage"] for record in infrastructure_failures(out) if "OSError" in record["error"]] == ["write"]
    every = [value for table in TABLES for value in table_ids(out)[table]]
    assert len(every) == len(set(every)) == 50 and summary["duplicate_rows"] == 0 and summary["ids_in_two_tables"] == 0
    assert not list(out.rglob(".*.partial"))


def test_the_generation_pool_grows_from_its_minimum_towards_its_maximum(synthesized):
    _, summary, _, lines, _, watcher = synthesized
    pool = summary["stages"]["generate"]["pool"]
    assert pool["min"] == 1 and pool["max"] == 2
    # The pool starts at its minimum and the autoscaler adds the second actor while work is
    # queued (whether that actor finishes a batch before the backlog is gone depends on the load).
    assert watcher.sizes[0] == 1, lines[-1]
    assert max(watcher.sizes) >= 2 and len(watcher.seen) >= 2, lines[-1]


def test_rerun_processes_nothing(synthesized, video_model):
    from vf3d.synthesis.synthesize import synthesize

    out, _, expected_errors, _, prompts, _ = synthesized
    before = table_ids(out)
    lines: list[str] = []
    summary = synthesize(prompts, video_model, out, config_lib.preset(SYNTHESIZE_PRESETS, "debug"), log=lines.append)
    assert summary["pending_this_run"] == 0 and summary["videos_this_run"] == 0 and summary["skipped_already_done"] == 50
    assert table_ids(out) == before
    assert f"{len(expected_errors)} failed before; 0 to synthesize" in lines[0]


def test_retrying_errors_archives_the_old_error_rows(synthesized, video_model):
    from vf3d.synthesis.synthesize import synthesize

    out, _, expected_errors, _, prompts, _ = synthesized
    kept_and_rejected = {table: ids for table, ids in table_ids(out).items() if table != "errors"}
    config = config_lib.merge(config_lib.preset(SYNTHESIZE_PRESETS, "debug"), {"retry_errors": True})
    summary = synthesize(prompts, video_model, out, config, log=lambda line: None)
    assert summary["pending_this_run"] == len(expected_errors) and summary["errors_this_run"] == len(expected_errors)
    ids = table_ids(out)
    assert sorted(ids["errors"]) == sorted(expected_errors) and {table: ids[table] for table in kept_and_rejected} == kept_and_rejected
    archived = list((out / shards.ERRORS_DIRNAME / "_retried").glob("*.parquet"))
    assert archived and summary["missing"] == 0 and summary["ids_in_two_tables"] == 0


def test_input_errors_exit_2_with_one_line(video_model, tmp_path, vf3d_main):
    duplicated = tmp_path / "duplicated.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "a"], "prompt": ["x", "y", "z"]}), duplicated)
    no_id = tmp_path / "no_id.parquet"
    pq.write_table(pa.table({"prompt": ["x"]}), no_id)
    cases = [
        (duplicated, video_model, "ids must be unique; repeated: ['a']"),
        (no_id, video_model, "no 'id' column"),
        (tmp_path / "missing.parquet", video_model, "--prompts not found"),
        (duplicated, tmp_path, "not a diffusers pipeline directory"),
    ]
    for prompts, model, message in cases:
        result = vf3d_main("synthesize", "--prompts", prompts, "--video-model", model, "--out", tmp_path / "out", "--preset", "debug")
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out").exists()


def test_a_folder_of_images_is_an_input(tmp_path):
    from skimage import data

    from vf3d.synthesis.synthesize import read_inputs

    (tmp_path / "cats").mkdir()
    Image.fromarray(data.chelsea()).save(tmp_path / "cats" / "chelsea.png")
    Image.fromarray(data.rocket()).save(tmp_path / "rocket.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    inputs = read_inputs(tmp_path)
    assert len(inputs.ids) == 2 and not inputs.needs_text_to_image
    assert sorted(inputs.table.column("prompt").to_pylist()) == ["chelsea", "rocket"]
