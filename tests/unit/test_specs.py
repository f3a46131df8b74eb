"""Command specs (vf3d.specs): one dataclass per command is its command line, its job file's `args:`
and its Python API. An option added as one field line (train-recon --seed, which sets
training.run.seed) reaches all three; every option of every command is on the command line and
accepted in a job file."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from vf3d import jobs, specs
from vf3d.cli import build_parser
from vf3d.config import ConfigError
from vf3d.evaluation.config import EVALUATE_PRESETS
from vf3d.models.reconstructor.config import INFERENCE_PRESETS, RECONSTRUCTOR_PRESETS
from vf3d.serving.config import SERVE_PRESETS
from vf3d.synthesis.config import RENDER_ASSETS_PRESETS, SYNTHESIZE_PRESETS, TRAIN_FILTER_PRESETS
from vf3d.training.config import FINETUNE_VIDEO_PRESETS, TRAIN_RECON_PRESETS

PACKAGE = Path(specs.__file__).resolve().parent


def parse(*argv: Any) -> specs.Spec:
    """The spec instance `vf3d ARGV...` runs."""
    return specs.from_namespace(build_parser().parse_args([str(arg) for arg in argv]))


# ---------------------------------------------------------------------------------------------
# One new option, three ways in: train-recon --seed
# ---------------------------------------------------------------------------------------------


def test_train_recon_seed_is_on_the_command_line(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train-recon", "--help"])
    assert re.search(r"--seed SEED +seed of model initialisation and data order", capsys.readouterr().out)
    spec = parse("train-recon", "--data", "orbits", "--out", "model", "--seed", "3")
    assert spec.seed == 3 and specs.resolve_config(spec).training.run.seed == 3
    unseeded = parse("train-recon", "--data", "orbits", "--out", "model")
    assert specs.resolve_config(unseeded).training.run.seed == 0, "not given: the preset's"


def test_train_recon_seed_is_in_job_files(tmp_path):
    job = jobs.validate_job({"stage": "train-recon", "preset": "debug", "args": {"data": "orbits", "out": "model", "seed": 3}})
    assert job.args["seed"] == 3
    invocation = jobs.build_invocation(job, [], tmp_path, None)
    assert "--seed" in invocation.argv and specs.resolve_config(invocation.spec()).training.run.seed == 3
    assert jobs.build_invocation(job, ["--seed", "4"], tmp_path, None).spec().seed == 4, "options after the job file win"
    with pytest.raises(ConfigError, match=r"^job file: args\.seed: expected an integer, got 'three'$"):
        jobs.validate_job({"stage": "train-recon", "args": {"seed": "three"}})


def test_train_recon_seed_is_in_the_python_api(tmp_path):
    spec = specs.TrainRecon(data=tmp_path, out=tmp_path / "model", seed=3)
    assert spec.config_overrides() == {"training": {"run": {"seed": 3}}}
    config = specs.resolve_config(spec)
    assert config.training.run.seed == 3 and config.training.run.name == "train-recon", "the rest is the preset's"
    assert spec == parse("train-recon", "--data", tmp_path, "--out", tmp_path / "model", "--seed", 3)


# ---------------------------------------------------------------------------------------------
# Every option of every command
# ---------------------------------------------------------------------------------------------


def sample(option: specs.Option) -> tuple[list[str], Any, Any]:
    """A well-typed value of `option`: (its command-line tokens, as a job file writes it, as the spec holds it)."""
    if option.kind is bool:
        return [option.flag], True, True
    if option.choices is not None:
        text, value = str(option.choices[-1]), option.choices[-1]
    else:
        text, value = {
            Path: ("some/dir", Path("some/dir")),
            # A URI must come through the command line, to_argv and job files untouched.
            specs.Location: ("s3://bucket/some/dir", specs.Location("s3://bucket/some/dir")),
            int: ("7", 7),
            float: ("0.5", 0.5),
            str: ("text", "text"),
        }[option.kind]
    job_value = value if option.kind is not Path else text
    if option.repeated:
        return [option.flag, text], [job_value], [value]
    if option.count is not None:
        return [option.flag, *[text] * option.count], [job_value] * option.count, (value,) * option.count
    return [text] if option.positional else [option.flag, text], job_value, value


SPEC_OPTIONS = [(spec, option) for spec in specs.SPECS.values() for option in specs.options(spec)]


@pytest.mark.parametrize("spec, option", SPEC_OPTIONS, ids=[f"{spec.command}:{option.name}" for spec, option in SPEC_OPTIONS])
def test_every_option_is_a_flag_and_a_job_file_key(spec, option):
    required = [token for other in specs.options(spec) if other.required and other is not option for token in sample(other)[0]]
    tokens, job_value, value = sample(option)
    parsed = parse(spec.command, *required, *tokens)
    assert getattr(parsed, option.name) == value
    assert parse(*specs.to_argv(spec.command, dataclasses.asdict(parsed))) == parsed, "a spec's command line gives the same spec"
    if option.name in jobs.RESERVED_ARGS:
        with pytest.raises(ConfigError, match=rf"args\.{option.name}: not allowed here"):
            jobs.check_args(spec, {option.name: job_value}, "job file")
    else:
        assert jobs.check_args(spec, {option.name: job_value}, "job file") == {option.name: job_value}


def test_jobs_and_show_config_take_the_stages_from_the_spec_registry():
    assert jobs.STAGES == ("render-assets", "finetune-video", "synthesize", "train-recon", "evaluate")
    assert all(jobs.STAGE_PRESETS[stage] is specs.SPECS[stage].presets for stage in jobs.STAGES)
    assert specs.CONFIG_TABLES == {
        "inference": INFERENCE_PRESETS,
        "reconstructor": RECONSTRUCTOR_PRESETS,
        "render-assets": RENDER_ASSETS_PRESETS,
        "finetune-video": FINETUNE_VIDEO_PRESETS,
        "synthesize": SYNTHESIZE_PRESETS,
        "train-filter": TRAIN_FILTER_PRESETS,
        "train-recon": TRAIN_RECON_PRESETS,
        "evaluate": EVALUATE_PRESETS,
        "serve": SERVE_PRESETS,
    }


def test_the_python_api_runs_a_spec_as_the_command_does(tmp_path, capsys):
    lines: list[str] = []
    specs.execute(specs.ShowConfig(kind="train-recon", preset="debug"), log=lines.append)
    assert json.loads(lines[0])["training"]["run"]["max_steps"] == 120
    status = specs.run_command(specs.TrainRecon(out=tmp_path / "model", seed=3))
    expected = "vf3d train-recon: error: give --data (synthetic orbit shards) and/or --data-3d (rendered orbit shards)"
    assert status == 2 and capsys.readouterr().err.strip() == expected
    with pytest.raises(TypeError):
        specs.TrainRecon(data=tmp_path)  # --out is required
    with pytest.raises(specs.UsageError, match="required: --out"):
        specs.build("train-recon", {"data": tmp_path})


def test_jobs_do_not_need_the_cli_nor_argparse_internals():
    imports = {node.module for node in ast.walk(ast.parse((PACKAGE / "jobs.py").read_text())) if isinstance(node, ast.ImportFrom)}
    assert "vf3d.cli" not in imports
    for name in ("cli.py", "jobs.py", "specs.py"):
        assert not re.search(r"argparse\._|\._actions\b|_option_string_actions", (PACKAGE / name).read_text()), name
