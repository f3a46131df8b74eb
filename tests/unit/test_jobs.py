"""Ray job entrypoints and their config files: every file in jobs/configs validates and maps to the
stage's spec, the same the CLI makes of the logged command line; bad files name the bad key;
submission ids are deterministic; `vf3d submit` fails with one line on bad input (no cluster needed)."""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vf3d import jobs, specs, storage
from vf3d.cli import build_parser
from vf3d.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
JOB_FILES = sorted((REPO / "jobs" / "configs").glob("*.yaml"))
VF3D = str(Path(sys.executable).with_name("vf3d"))


def test_every_stage_has_a_thin_entrypoint_and_a_debug_and_a_cluster_config():
    names = {path.name for path in JOB_FILES}
    for stage in jobs.STAGES:
        entry = REPO / "jobs" / f"{stage.replace('-', '_')}.py"
        tree = ast.parse(entry.read_text())
        code = [node for node in tree.body if not isinstance(node, ast.Expr)]  # the docstring aside
        assert len(code) <= 3 and f'main("{stage}")' in entry.read_text(), f"{entry} should only call vf3d.jobs.main"
        assert {f"{stage}-debug.yaml", f"{stage}-cluster.yaml"} <= names


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda path: path.name)
def test_every_job_file_validates_and_maps_to_a_command_line_the_cli_accepts(path, tmp_path):
    spec = jobs.load_job_file(path)
    assert path.name.startswith(spec.stage + "-")
    config_file = tmp_path / "job-config.json" if spec.config else None
    invocation = jobs.build_invocation(spec, [], tmp_path, config_file)
    args = build_parser().parse_args(invocation.argv)
    assert specs.from_namespace(args) == invocation.spec(), "the job runs what `vf3d` runs from the command line it logs"
    assert args.command == spec.stage and args.preset == (spec.preset or args.preset)
    assert args.config == config_file
    for value in vars(args).values():  # every path is absolute: workers do not share the driver's cwd
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, Path):
                assert item.is_absolute(), (path.name, item)
    if path.name.endswith("-cluster.yaml"):
        assert spec.preset not in (None, "debug"), "production presets on clusters"
        assert "/mnt/data/" in " ".join(invocation.argv), "cluster jobs read and write shared storage"
    else:
        assert spec.preset == "debug" and all(
            not Path(value).is_absolute() for value in spec.args.values() if isinstance(value, str) and "/" in value
        )


def test_debug_jobs_chain_from_renders_to_an_evaluation():
    """Each debug job reads what an earlier one wrote (under job-output/), or what ships in jobs/."""
    written: set[str] = set()
    for stage in jobs.STAGES:
        spec = jobs.load_job_file(REPO / "jobs" / "configs" / f"{stage}-debug.yaml", stage)
        inputs = {
            key: value
            for key, value in spec.args.items()
            if key in ("data", "data_3d", "video_model", "model", "prompts", "assets") and value != jobs.SAMPLE_ASSETS
        }
        for key, value in inputs.items():
            for item in value if isinstance(value, list) else [value]:
                assert item in written or (REPO / item).exists(), f"{stage}: args.{key} {item} is made by no earlier job"
        written.add(spec.args["out"])
        if spec.args.get("assets") == jobs.SAMPLE_ASSETS:
            written.add(str(Path(spec.args["out"]).parent / jobs.SAMPLE_ASSETS_DIRNAME))


def write(path: Path, document: dict) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize(
    "document, expected",
    [
        ({"stage": "render-assets", "preset": "debug", "arg": {}}, "unknown key(s): arg"),
        ({"preset": "debug"}, "`stage` is required"),
        ({"stage": "paint"}, "unknown stage 'paint'"),
        ({"stage": "render-assets", "preset": "huge"}, "unknown render-assets preset 'huge'"),
        ({"stage": "render-assets", "args": {"assets": "a", "output": "b"}}, "args: unknown key 'output'"),
        ({"stage": "render-assets", "args": {"address": "auto"}}, "args.address: not allowed"),
        ({"stage": "render-assets", "args": {"preset": "debug"}}, "args.preset: not allowed"),
        ({"stage": "render-assets", "args": {"views": "many"}}, "args.views: expected an integer"),
        ({"stage": "render-assets", "args": {"elevation_range": [0]}}, "args.elevation_range: expected a list of 2 values"),
        ({"stage": "synthesize", "args": {"retry_errors": "yes"}}, "args.retry_errors: expected true/false"),
        ({"stage": "render-assets", "config": {"pool": {"max_actor": 3}}}, "config: unknown key(s) in pool: max_actor"),
        ({"stage": "render-assets", "config": {"render": {"resolution": 8}}}, "config: render.resolution must be between"),
    ],
)
def test_bad_job_files_name_the_bad_key(tmp_path, document, expected):
    with pytest.raises(ConfigError) as error:
        jobs.load_job_file(write(tmp_path / "job.yaml", document))
    assert expected in str(error.value) and "job.yaml" in str(error.value)


def test_a_job_file_for_another_stage_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="stage is 'synthesize', but this runs 'render-assets'"):
        jobs.load_job_file(write(tmp_path / "job.yaml", {"stage": "synthesize"}), "render-assets")


def test_command_line_arguments_override_the_file_and_paths_resolve_against_the_data_root(tmp_path):
    spec = jobs.validate_job(
        {
            "stage": "evaluate",
            "preset": "debug",
            "args": {"model": ["m1", "/abs/m2"], "data": "orbits", "out": "report", "limit": 4, "device": "cpu"},
            "config": {"num_views": 2},
        }
    )
    invocation = jobs.build_invocation(spec, ["--model", "other", "--limit", "2", "--preset", "full"], tmp_path, tmp_path / "c.json")
    args = build_parser().parse_args(invocation.argv)
    assert specs.from_namespace(args) == invocation.spec()
    assert [Path(model) for model in args.model] == [tmp_path / "other"], "a repeatable option given again replaces the file's list"
    assert args.limit == 2 and args.preset == "full" and args.device == "cpu" and args.config == tmp_path / "c.json"
    assert Path(args.data) == tmp_path / "orbits" and Path(args.out) == tmp_path / "report"
    file_only = build_parser().parse_args(jobs.build_invocation(spec, [], tmp_path, None).argv)
    assert [Path(model) for model in file_only.model] == [tmp_path / "m1", Path("/abs/m2")] and file_only.preset == "debug"

    flags = jobs.validate_job({"stage": "synthesize", "args": {"prompts": "p.jsonl", "video_model": "v", "out": "o", "retry_errors": True}})
    assert "--retry-errors" in jobs.build_invocation(flags, [], tmp_path, None).argv
    assert (
        "--retry-errors"
        not in jobs.build_invocation(jobs.validate_job({"stage": "synthesize", "args": {"retry_errors": False}}), [], tmp_path, None).argv
    )
    with pytest.raises(ConfigError, match="--views: invalid int"):
        jobs.build_invocation(jobs.validate_job({"stage": "render-assets"}), ["--views", "x"], tmp_path, None)
    with pytest.raises(ConfigError, match="--config here is the job file"):
        jobs.build_invocation(jobs.validate_job({"stage": "render-assets"}), ["--config", "x.yaml"], tmp_path, None)


def test_a_job_missing_a_required_option_is_one_line(capsys):
    status = jobs.main("synthesize", ["--out", "o"])
    expected = "vf3d job synthesize: error: the following arguments are required: --prompts, --video-model"
    assert status == 2 and capsys.readouterr().err.strip().splitlines() == [expected]


def test_inputs_shipped_in_the_repository_resolve_in_the_job_working_directory(tmp_path):
    shipped = tmp_path / "working-dir-copy"
    (shipped / "jobs" / "prompts").mkdir(parents=True)
    (shipped / "jobs" / "prompts" / "debug.jsonl").write_text("{}\n")
    spec = jobs.validate_job(
        {
            "stage": "synthesize",
            "args": {"prompts": "jobs/prompts/debug.jsonl", "video_model": "job-output/video-model", "out": "job-output/synthetic"},
        }
    )
    args = build_parser().parse_args(jobs.build_invocation(spec, [], tmp_path / "data", None, shipped=shipped).argv)
    # Location options (which may be URIs) hold text: compare them as paths.
    assert Path(args.prompts) == shipped / "jobs" / "prompts" / "debug.jsonl"
    assert (
        Path(args.video_model) == tmp_path / "data" / "job-output" / "video-model"
        and Path(args.out) == tmp_path / "data" / "job-output" / "synthetic"
    )
    (tmp_path / "data" / "jobs" / "prompts").mkdir(parents=True)
    (tmp_path / "data" / "jobs" / "prompts" / "debug.jsonl").write_text("{}\n")  # the data root's own copy wins
    assert (
        Path(build_parser().parse_args(jobs.build_invocation(spec, [], tmp_path / "data", None, shipped=shipped).argv).prompts)
        == tmp_path / "data" / "jobs" / "prompts" / "debug.jsonl"
    )


def test_relative_paths_become_keys_under_an_object_store_data_root(tmp_path, s3_bucket, monkeypatch):
    root = f"{s3_bucket}/project/"
    shipped = tmp_path / "working-dir-copy"
    (shipped / "jobs" / "prompts").mkdir(parents=True)
    (shipped / "jobs" / "prompts" / "debug.jsonl").write_text("{}\n")
    spec = jobs.validate_job(
        {"stage": "synthesize", "args": {"prompts": "jobs/prompts/debug.jsonl", "video_model": "video-model", "out": "/abs/synthetic"}}
    )
    monkeypatch.setenv(jobs.DATA_ROOT_ENV, root)
    assert jobs.data_root() == f"{s3_bucket}/project"
    args = build_parser().parse_args(jobs.build_invocation(spec, [], jobs.data_root(), None, shipped=shipped).argv)
    assert args.video_model == f"{s3_bucket}/project/video-model", "a relative output is a key under the prefix, not a local path"
    assert Path(args.out) == Path("/abs/synthetic")
    # An input only the repository ships resolves there; once the prefix holds one, the prefix's wins.
    assert Path(args.prompts) == shipped / "jobs" / "prompts" / "debug.jsonl"
    storage.publish_bytes(b"{}\n", f"{s3_bucket}/project/jobs/prompts/debug.jsonl")
    args = build_parser().parse_args(jobs.build_invocation(spec, [], jobs.data_root(), None, shipped=shipped).argv)
    assert args.prompts == f"{s3_bucket}/project/jobs/prompts/debug.jsonl"

    render = jobs.validate_job({"stage": "render-assets", "preset": "debug", "args": {"assets": "sample", "out": "job-output/orbits"}})
    invocation = jobs.build_invocation(render, [], jobs.data_root(), None)
    assert invocation.sample_assets_dir == f"{s3_bucket}/project/job-output/sample-assets"
    assert build_parser().parse_args(invocation.argv).out == f"{s3_bucket}/project/job-output/orbits"

    job_file = REPO / "jobs" / "configs" / "render-assets-debug.yaml"
    submission = jobs.prepare_submission("render-assets", "http://10.0.0.1:8265", job_file, [], data_root=root)
    assert submission.runtime_env["env_vars"] == {jobs.DATA_ROOT_ENV: f"{s3_bucket}/project"}


def test_sample_assets_are_gathered_next_to_the_output(tmp_path):
    spec = jobs.validate_job({"stage": "render-assets", "preset": "debug", "args": {"assets": "sample", "out": "job-output/orbits"}})
    invocation = jobs.build_invocation(spec, [], tmp_path, None)
    assert invocation.sample_assets_dir == tmp_path / "job-output" / "sample-assets"
    args = build_parser().parse_args(invocation.argv)
    assert Path(args.assets) == invocation.sample_assets_dir and Path(args.out) == tmp_path / "job-output" / "orbits"
    explicit = jobs.build_invocation(spec, ["--assets", "meshes"], tmp_path, None)
    assert explicit.sample_assets_dir is None and Path(build_parser().parse_args(explicit.argv).assets) == tmp_path / "meshes"


def test_submission_ids_are_deterministic_and_differ_for_different_jobs(tmp_path):
    job_file = REPO / "jobs" / "configs" / "render-assets-debug.yaml"

    def prepared(*stage_args, job=job_file, stage="render-assets", data_root=tmp_path, **kwargs):
        return jobs.prepare_submission(stage, "http://10.0.0.1:8265", job, list(stage_args), data_root=data_root, **kwargs)

    first = prepared("--out", "a")
    assert first.submission_id == prepared("--out", "a").submission_id
    assert first.submission_id.startswith("vf3d-render-assets-") and len(first.submission_id) == len("vf3d-render-assets-") + 12
    others = {
        prepared("--out", "b").submission_id,
        prepared("--out", "a", "--views", "4").submission_id,
        prepared("--out", "a", data_root=tmp_path / "x").submission_id,
        prepared("--out", "a", job=None).submission_id,
        prepared("--out", "a", job=None, stage="synthesize").submission_id,
    }
    assert len(others) == 5 and first.submission_id not in others
    assert prepared("--out", "a", submission_id="mine").submission_id == "mine"
    # The job file's contents count, not only its name.
    copy = REPO / "jobs" / "configs" / "render-assets-debug.yaml"
    edited = tmp_path / "edited.yaml"
    edited.write_text(copy.read_text().replace("job-output/orbits", "job-output/orbits2"))
    assert jobs.submission_id_for(
        "render-assets", "python jobs/render_assets.py --config x.yaml", copy.read_text(), {}
    ) != jobs.submission_id_for("render-assets", "python jobs/render_assets.py --config x.yaml", edited.read_text(), {})

    # What the job server gets: the repository as working_dir, the package as py_modules.
    assert first.entrypoint == "python jobs/render_assets.py --config jobs/configs/render-assets-debug.yaml --out a"
    assert first.runtime_env["working_dir"] == str(REPO) and first.runtime_env["py_modules"] == [str(REPO / "platform" / "vf3d")]
    assert first.runtime_env["env_vars"] == {jobs.DATA_ROOT_ENV: str(tmp_path)}
    remote = jobs.prepare_submission("render-assets", "http://10.0.0.1:8265", job_file, [])
    local = jobs.prepare_submission("render-assets", "http://127.0.0.1:8265", job_file, [])
    assert "env_vars" not in remote.runtime_env and local.runtime_env["env_vars"] == {jobs.DATA_ROOT_ENV: str(Path.cwd().resolve())}


def test_submission_checks_its_inputs_before_contacting_the_cluster(tmp_path):
    outside = write(tmp_path / "job.yaml", {"stage": "render-assets", "preset": "debug"})
    with pytest.raises(jobs.JobSubmitError, match="inside the working directory"):
        jobs.prepare_submission("render-assets", "http://127.0.0.1:1", outside)
    ignored = REPO / "job-output" / f"unit-test-job-{os.getpid()}.yaml"  # job-output/ is never uploaded
    created = not ignored.parent.exists()
    ignored.parent.mkdir(exist_ok=True)
    try:
        write(ignored, {"stage": "render-assets", "preset": "debug"})
        with pytest.raises(jobs.JobSubmitError, match="not uploaded with the working directory"):
            jobs.prepare_submission("render-assets", "http://127.0.0.1:1", ignored)
    finally:
        ignored.unlink()
        if created:
            ignored.parent.rmdir()
    with pytest.raises(jobs.JobSubmitError, match="no jobs/ directory"):
        jobs.prepare_submission("render-assets", "http://127.0.0.1:1", working_dir=tmp_path)
    with pytest.raises(jobs.JobSubmitError, match="unknown stage"):
        jobs.prepare_submission("serve", "http://127.0.0.1:1")


@pytest.mark.parametrize(
    "argv, options, stage_args",
    [
        (["render-assets", "--address", "U", "--wait", "--", "--out", "x"], {"address": "U", "wait": True}, ["--out", "x"]),
        (["--address", "U", "render-assets", "--", "--out", "x"], {"address": "U", "wait": False}, ["--out", "x"]),
        (["render-assets", "--", "--out", "x", "--address", "auto"], {"address": None}, ["--out", "x", "--address", "auto"]),
        (["render-assets", "--address=U", "--num-cpus", "2", "--out", "x"], {"address": "U", "num_cpus": 2.0}, ["--out", "x"]),
        (["render-assets", "--config", "a.yaml", "--", "--config", "b.yaml"], {"config": Path("a.yaml")}, ["--config", "b.yaml"]),
        (["train-recon", "--data-root", "r", "--", "--data", "d"], {"data_root": "r"}, ["--data", "d"]),
    ],
)
def test_submit_separates_its_options_from_the_stage_arguments(argv, options, stage_args, monkeypatch):
    from vf3d.cli import _submit_stage_args

    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    args = build_parser().parse_args(["submit", *argv])
    assert _submit_stage_args(args) == stage_args
    assert {key: getattr(args, key) for key in options} == options


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["paint", "--address", "http://127.0.0.1:1"], "unknown stage 'paint'"),
        (["render-assets"], "give --address"),
        (["render-assets", "--address", "http://127.0.0.1:1", "--", "--bogus"], "render-assets arguments: unrecognized arguments: --bogus"),
        (["render-assets", "--address", "http://127.0.0.1:1", "--", "--views", "x"], "--views: invalid int value"),
        (
            ["render-assets", "--address", "http://127.0.0.1:1", "--config", "jobs/configs/synthesize-debug.yaml"],
            "but this runs 'render-assets'",
        ),
        (
            [
                "render-assets",
                "--address",
                "http://127.0.0.1:PORT",
                "--config",
                "jobs/configs/render-assets-debug.yaml",
                "--",
                "--out",
                "o",
            ],
            "cannot reach the Ray job server at http://127.0.0.1:PORT",
        ),
    ],
)
def test_submit_errors_are_one_line_with_exit_code_2(args, expected, vf3d_main, monkeypatch):
    port = str(closed_port())
    args = [arg.replace("PORT", port) for arg in args]
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    result = vf3d_main("submit", *args, cwd=REPO)
    lines = [line for line in result.stderr.strip().splitlines() if " WARNING " not in line]  # Ray's packaging warnings
    assert (
        result.returncode == 2
        and len(lines) == 1
        and lines[0].startswith("vf3d submit: error:")
        and expected.replace("PORT", port) in lines[0]
    ), result.stderr


def test_job_entrypoint_rejects_a_bad_job_file_with_one_line(tmp_path):
    bad = write(tmp_path / "job.yaml", {"stage": "render-assets", "args": {"asset": "x"}})
    result = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "render_assets.py"), "--config", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert (
        result.returncode == 2
        and result.stderr.strip()
        == f"vf3d job render-assets: error: {bad}: args: unknown key 'asset' for render-assets (valid: assets, elevation_range, out, resolution, views)"
    ), result.stderr


def test_dropped_connections_are_retried_then_named_in_one_line():
    """A refused connection (a real request to a closed port) is retried until the deadline, then
    becomes JobSubmitError naming what was asked; a call that recovers returns its value; any
    other error passes through at once."""
    import time

    import requests

    url = f"http://127.0.0.1:{closed_port()}/api/jobs/x"
    said = []
    started = time.monotonic()
    with pytest.raises(jobs.JobSubmitError, match="kept dropping the connection for 1 s \\(the status of job x\\)") as raised:
        jobs._retrying(lambda: requests.get(url, timeout=5), "the status of job x", log=said.append, wait_s=1.0)
    assert "\n" not in str(raised.value) and time.monotonic() - started >= 1.0
    assert len(said) == 1 and said[0].startswith("the connection to the Ray job server dropped (the status of job x")

    attempts = []

    def refused_once():
        attempts.append(1)
        return requests.get(url, timeout=5) if len(attempts) == 1 else "answered"

    assert jobs._retrying(refused_once, "a query", log=said.append, wait_s=30.0) == "answered" and len(attempts) == 2
    with pytest.raises(RuntimeError, match="Request failed with status code 500"):
        jobs._retrying(lambda: (_ for _ in ()).throw(RuntimeError("Request failed with status code 500")), "a query", log=said.append)
