"""Resume at scale: id manifests written with each shard, old directories without them, the
finished-id set shared with the prepare tasks, streamed CSV/JSONL inputs, and the output lease."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vf3d import config as config_lib
from vf3d.config import ConfigError
from vf3d.data import manifest, shards
from vf3d.data.manifest import IdSet
from vf3d.synthesis.config import SYNTHESIZE_PRESETS, LeaseConfig
from vf3d.synthesis.lease import LEASE_NAME, LeaseHeldError, OutputLease


def error_rows(ids):
    return [{"id": identifier, "stage": "generate", "reason": "test"} for identifier in ids]


def write_errors(out, batches, manifest_on=True):
    writer = shards.OrbitShardWriter(out, prefix="synthetic", manifest=manifest_on)
    paths = [writer.write_errors(error_rows(batch)) for batch in batches]
    writer.close()
    return paths


# ---------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------


def test_each_published_shard_is_recorded_in_the_writers_id_log(tmp_path):
    paths = write_errors(tmp_path, [["a", "b"], ["c"], ["d", "e", "f"]])
    logs = manifest.manifest_files(tmp_path)
    assert len(logs) == 1 and logs[0].parent.name == manifest.MANIFEST_DIRNAME
    entries = manifest.read_manifest(logs[0]).to_pylist()
    assert entries == [
        {"table": "errors", "file": path.name, "ids": sorted(pq.read_table(path, columns=["id"])["id"].to_pylist())} for path in paths
    ]
    index = shards.index_shards(tmp_path)
    assert index.read_from_shards == 0 and sorted(index.ids("errors").to_pylist()) == list("abcdef")
    assert shards.read_ids(tmp_path, table="errors") == set("abcdef") and shards.read_ids(tmp_path) == set()


def test_a_directory_written_before_manifests_still_resumes_and_is_indexed_once(tmp_path):
    write_errors(tmp_path, [["a", "b"], ["c"]], manifest_on=False)
    assert manifest.manifest_files(tmp_path) == []
    index = shards.index_shards(tmp_path)
    assert index.read_from_shards == 2 and sorted(index.ids("errors").to_pylist()) == ["a", "b", "c"]
    shards.compact_index(tmp_path, index)
    again = shards.index_shards(tmp_path)
    assert again.read_from_shards == 0 and sorted(again.ids("errors").to_pylist()) == ["a", "b", "c"]
    assert [path.name.startswith("index-") for path in manifest.manifest_files(tmp_path)] == [True]


def test_the_manifest_never_overrides_what_is_on_disk(tmp_path):
    first, moved = write_errors(tmp_path, [["a", "b"], ["c"]])
    # A shard published by a writer killed before its log entry, and a torn log tail.
    write_errors(tmp_path, [["x"]], manifest_on=False)
    log = manifest.manifest_files(tmp_path)[0]
    write_errors(tmp_path, [["y", "z"]])
    torn = [path for path in manifest.manifest_files(tmp_path) if path != log][0]
    torn.write_bytes(torn.read_bytes()[:-20])
    # A file moved out of its table (as retried errors are) no longer counts.
    (tmp_path / shards.ERRORS_DIRNAME / "_retried").mkdir()
    moved.replace(tmp_path / shards.ERRORS_DIRNAME / "_retried" / moved.name)
    index = shards.index_shards(tmp_path)
    assert sorted(index.ids("errors").to_pylist()) == ["a", "b", "x", "y", "z"]
    assert index.read_from_shards == 2  # x (no entry) and y, z (torn entry)
    assert index.files("errors") and first.name in index.files("errors")


def test_a_partial_index_from_a_killed_planner_is_removed(tmp_path):
    write_errors(tmp_path, [["a"]])
    partial = tmp_path / manifest.MANIFEST_DIRNAME / ".index-0123.arrow.partial"
    partial.write_bytes(b"ARROW1 cut short")
    assert shards.remove_partials(tmp_path) == 1 and not partial.exists()
    assert shards.read_ids(tmp_path, table="errors") == {"a"}


# ---------------------------------------------------------------------------------------------
# The finished-id set
# ---------------------------------------------------------------------------------------------


def test_id_set_membership_matches_a_python_set():
    rng = np.random.default_rng(0)
    alphabet = list("abcxyz0123-_/é漢 ")
    members = sorted({"".join(rng.choice(alphabet, size=rng.integers(1, 40))) for _ in range(5000)})
    probes = members[::3] + ["".join(rng.choice(alphabet, size=rng.integers(1, 40))) for _ in range(3000)] + ["", "a" * 5000]
    id_set = IdSet(pa.chunked_array([members[:2000], members[2000:] + members[:10]]))  # chunked, with repeats
    expected = set(members)
    assert id_set.contains(probes).tolist() == [probe in expected for probe in probes]
    assert id_set.contains(pa.array(probes).slice(7, 100)).tolist() == [probe in expected for probe in probes[7:107]]
    assert not IdSet().contains(["a"]).any() and "p1" in IdSet(["p0", "p1"]) and "p2" not in IdSet(["p0", "p1"])


def test_id_set_positions_subsets_and_repeats_match_python():
    rng = np.random.default_rng(1)
    values = [f"id-{int(number)}" for number in rng.integers(0, 800, size=1500)]  # many repeats
    id_set = IdSet(values)
    positions = id_set.positions(["id-3", "nope", *values[:50]])
    assert positions[1] == -1 and all(
        values[position] == probe for position, probe in zip(positions.tolist(), ["id-3", "nope", *values[:50]]) if position >= 0
    )
    assert (positions[2:] >= 0).all() and (positions[0] >= 0) == ("id-3" in values)
    assert id_set.distinct_count() == len(set(values))
    repeats = id_set.repeated()
    assert len(repeats) == len(values) - len(set(values)) and all(
        values[index] in values[:index] + values[index + 1 :] for index in repeats.tolist()
    )
    keep = rng.random(len(values)) < 0.3
    subset = id_set.subset(keep)
    kept = {value for value, chosen in zip(values, keep) if chosen}
    probes = sorted(set(values)) + ["nope"]
    assert subset.contains(probes).tolist() == [probe in kept for probe in probes]
    assert len(subset) == int(keep.sum()) and subset.ids.to_pylist() == [value for value, chosen in zip(values, keep) if chosen]
    assert IdSet().distinct_count() == 0 and len(IdSet(["a"]).subset(np.zeros(1, bool))) == 0


def test_id_set_bucket_search_equals_a_binary_search():
    rng = np.random.default_rng(2)
    for count in (0, 1, 7, 5000):
        id_set = IdSet([f"x{index}" for index in range(count)])
        probes = np.concatenate(
            [rng.integers(0, 2**63, size=300, dtype=np.uint64) * np.uint64(2), id_set.hashes[::3], np.array([0, 2**64 - 1], np.uint64)]
        )
        assert id_set._lower_bound(probes).tolist() == np.searchsorted(id_set.hashes, probes, side="left").tolist()


def test_prepare_drops_ids_in_the_finished_set():
    from vf3d.synthesis.stages import prepare_inputs

    config = config_lib.to_dict(config_lib.preset(SYNTHESIZE_PRESETS, "debug"))
    batch = pa.table({"id": ["a", "b", "c", "d"], "prompt": ["a mug"] * 4})
    rows = prepare_inputs(batch, IdSet(["b", "d", "zz"]), config, "/nonexistent")
    assert rows.column("id").to_pylist() == ["a", "c"]


# ---------------------------------------------------------------------------------------------
# Planning and the summary checks
# ---------------------------------------------------------------------------------------------


def test_plan_resume_counts_finished_inputs_and_archives_retried_errors(tmp_path):
    from vf3d.synthesis.synthesize import exactly_once_counts, plan_resume, read_inputs

    prompts = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"id": [f"p{index}" for index in range(10)], "prompt": ["a mug"] * 10}), prompts)
    out = tmp_path / "out"
    write_errors(out, [["p0", "p1"], ["p2", "other"]])
    inputs = read_inputs(prompts)
    plan = plan_resume(inputs, out, retry_errors=False)
    assert plan.counts == {"orbits": 0, "rejected": 0, "errors": 3} and plan.pending == 7
    assert plan.done.contains(["p0", "p2", "p3", "other"]).tolist() == [True, True, False, False]
    checks = exactly_once_counts(plan.index, inputs.ids)
    assert checks == {"kept_total": 0, "rejected_total": 0, "errors_total": 3, "missing": 7, "ids_in_two_tables": 0, "duplicate_rows": 0}

    retried = plan_resume(inputs, out, retry_errors=True)
    assert retried.pending == 10 and retried.retried_files == 2 and len(retried.done) == 0
    assert len(list((out / shards.ERRORS_DIRNAME / "_retried").iterdir())) == 2 and shards.read_ids(out, table="errors") == set()


def test_exactly_once_counts_see_duplicates_and_ids_in_two_tables():
    from vf3d.synthesis.synthesize import exactly_once_counts

    entries = pa.Table.from_pylist(
        [
            {"table": "orbits", "file": "s-1.parquet", "ids": ["a", "b"]},
            {"table": "rejected", "file": "s-2.parquet", "ids": ["b", "c"]},
            {"table": "errors", "file": "s-3.parquet", "ids": ["c", "x"]},
            {"table": "errors", "file": "s-4.parquet", "ids": ["x"]},
        ],
        schema=manifest.MANIFEST_SCHEMA,
    )
    checks = exactly_once_counts(shards.ShardIndex(entries=entries, manifests=[]), pa.array(["a", "b", "c", "d"]))
    assert checks == {"kept_total": 2, "rejected_total": 2, "errors_total": 1, "missing": 1, "ids_in_two_tables": 2, "duplicate_rows": 1}


# ---------------------------------------------------------------------------------------------
# Streamed inputs
# ---------------------------------------------------------------------------------------------


def test_csv_and_jsonl_inputs_are_streamed_and_checked(tmp_path, monkeypatch):
    from vf3d.synthesis import synthesize as synthesize_module
    from vf3d.synthesis.synthesize import InputError, read_inputs

    monkeypatch.setattr(synthesize_module, "INPUT_BLOCK_BYTES", 4096)  # many blocks from a small file
    csv = tmp_path / "prompts.csv"
    csv.write_text("id,prompt\n" + "".join(f"{index:05d},prompt {index}\n" for index in range(3000)))
    inputs = read_inputs(csv)
    assert inputs.format == "csv" and len(inputs.ids) == 3000 and inputs.ids[7].as_py() == "00007" and inputs.needs_text_to_image
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text("".join(json.dumps({"id": f"j{index}", "prompt": "a mug", "image": "cat.png"}) + "\n" for index in range(3000)))
    inputs = read_inputs(jsonl)
    assert inputs.format == "jsonl" and len(inputs.ids) == 3000 and not inputs.needs_text_to_image
    jsonl.write_text(jsonl.read_text() + json.dumps({"id": "j5", "prompt": "again"}) + "\n")
    with pytest.raises(InputError, match=r"ids must be unique; repeated: \['j5'\]"):
        read_inputs(jsonl)
    csv.write_text("id,prompt\na,x\n ,y\n")
    with pytest.raises(InputError, match="row 1 has an empty id"):
        read_inputs(csv)
    csv.write_text("name,prompt\na,x\n")
    with pytest.raises(InputError, match="no 'id' column"):
        read_inputs(csv)


# ---------------------------------------------------------------------------------------------
# The output lease
# ---------------------------------------------------------------------------------------------

FAST = LeaseConfig(heartbeat_seconds=0.05, stale_after_seconds=60.0)


def test_a_live_holder_makes_a_second_run_refuse_naming_it(tmp_path):
    lines = []
    with OutputLease(tmp_path, FAST, command="synthesize", log=lines.append):
        with pytest.raises(LeaseHeldError) as refused:
            OutputLease(tmp_path, FAST, log=lines.append).acquire()
        message = str(refused.value)
        assert f"host {socket.gethostname()}, pid {os.getpid()}, started " in message and "synthesize" in message and "\n" not in message
        assert isinstance(refused.value, ConfigError)  # the CLI's exit 2, one line
    assert not (tmp_path / LEASE_NAME).exists() and lines == []
    OutputLease(tmp_path, FAST).acquire().release()  # free again once released


def test_a_lease_held_by_another_live_process_refuses(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom vf3d.synthesis.lease import OutputLease\nfrom vf3d.synthesis.config import LeaseConfig\n"
            f"lease = OutputLease({str(tmp_path)!r}, LeaseConfig(0.05, 60.0)).acquire()\nprint('held', flush=True)\ntime.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeldError, match=f"pid {holder.pid}, started"):
            OutputLease(tmp_path, FAST).acquire()
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed without releasing: its pid is gone, so the lease is taken over.
    lines = []
    with OutputLease(tmp_path, FAST, log=lines.append) as lease:
        assert json.loads((tmp_path / LEASE_NAME).read_text())["token"] == lease.token
    assert len(lines) == 1 and "taking over a stale lease" in lines[0] and f"pid {holder.pid}" in lines[0] and "is gone" in lines[0]


def test_a_lease_from_another_host_is_stale_only_after_its_heartbeat_timeout(tmp_path):
    lease_file = tmp_path / LEASE_NAME
    fresh = {"host": "elsewhere", "pid": 1, "started": "2026-01-01T00:00:00+00:00", "heartbeat": time.time(), "token": "t1"}
    lease_file.write_text(json.dumps(fresh))
    with pytest.raises(LeaseHeldError, match="host elsewhere, pid 1"):
        OutputLease(tmp_path, FAST).acquire()
    lease_file.write_text(json.dumps({**fresh, "heartbeat": time.time() - 3600}))
    lines = []
    OutputLease(tmp_path, FAST, log=lines.append).acquire().release()
    assert "no heartbeat for" in lines[0] and not lease_file.exists()


def test_the_heartbeat_moves_forward_while_the_lease_is_held(tmp_path):
    with OutputLease(tmp_path, FAST):
        first = json.loads((tmp_path / LEASE_NAME).read_text())["heartbeat"]
        deadline = time.monotonic() + 30
        while json.loads((tmp_path / LEASE_NAME).read_text())["heartbeat"] == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert json.loads((tmp_path / LEASE_NAME).read_text())["heartbeat"] > first
