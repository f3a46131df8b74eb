"""The `vf3d` command: a parser generated from the command specs (vf3d.specs); every command has its own --help.

Bad input (unreadable images, bad configs, wrong model directories) exits with status 2 and one
line on stderr naming the problem; unexpected failures keep their traceback and exit 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vf3d import __version__, specs
from vf3d.ray_runtime import VERBOSE_ENV
from vf3d.specs import UsageError
from vf3d.storage import Location

__all__ = ["UsageError", "build_parser", "main"]


_print = specs.print_flushed


# --------------------------------------------------------------------------------------------
# submit (the logic lives in vf3d.jobs)
# --------------------------------------------------------------------------------------------


def _submit_options() -> dict[str, dict[str, Any]]:
    """`vf3d submit`'s own options: flag → argparse settings. One table serves the parser and the
    split of what follows STAGE into these options and the stage's arguments."""
    return {
        "--address": {
            "default": os.environ.get("RAY_API_SERVER_ADDRESS"),
            "metavar": "URL",
            "help": "the cluster's job server, i.e. the dashboard: http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS)",
        },
        "--wait": {
            "action": "store_true",
            "help": "stream the job's logs until it ends; exit 0 when it succeeded, 1 when it failed or was stopped",
        },
        "--submission-id": {
            "metavar": "ID",
            "help": "job id (default: vf3d-STAGE-<hash of the stage, its arguments and the job file>, so a retried submit finds the "
            "first job)",
        },
        "--num-cpus": {"type": float, "metavar": "N", "help": "CPUs reserved for the job's driver (entrypoint_num_cpus)"},
        "--num-gpus": {
            "type": float,
            "metavar": "N",
            "help": "GPUs reserved for the job's driver (entrypoint_num_gpus; evaluate runs its model there)",
        },
        "--config": {
            "type": Path,
            "metavar": "JOBFILE",
            "help": "job config file inside the working directory, e.g. jobs/configs/render-assets-debug.yaml",
        },
        "--working-dir": {
            "type": Path,
            "metavar": "DIR",
            "help": "repository root uploaded as the job's working_dir (default: the one holding this vf3d's jobs/, else the current "
            "directory)",
        },
        "--data-root": {
            "type": Location,
            "metavar": "DIR|URI",
            "help": "where the job's relative paths resolve: a directory or an s3:// / gs:// prefix (sets VF3D_DATA_ROOT; default: "
            "the current directory when --address is on this machine)",
        },
    }


def _add_submit_options(parser: argparse.ArgumentParser) -> None:
    for flag, settings in _submit_options().items():
        parser.add_argument(flag, **settings)


def _submit_stage_args(args: argparse.Namespace) -> list[str]:
    """Split what argparse left after STAGE (args.rest) into submit options, parsed into `args`,
    and the stage's arguments: everything after `--`, or from the first token that is not a
    submit option (argparse drops a `--` that directly follows STAGE)."""
    submit_options = _submit_options()
    index, split = 0, None
    while index < len(args.rest) and split is None:
        token = args.rest[index]
        flag = token.split("=", 1)[0]
        if token == "--":
            split = index
        elif flag not in submit_options:
            break
        else:
            takes_no_value = "=" in token or submit_options[flag].get("action") == "store_true"
            index += 1 if takes_no_value else 2
    head = args.rest[: index if split is None else split]
    options = argparse.ArgumentParser(prog=f"vf3d submit {args.stage}", allow_abbrev=False)  # --data is not --data-root
    _add_submit_options(options)
    options.parse_args(head, namespace=args)
    return args.rest[index:] if split is None else args.rest[split + 1 :]


def _submit(args: argparse.Namespace) -> int:
    from vf3d import jobs

    stage_args = _submit_stage_args(args)
    specs.check_config_file(args.config)
    if not args.address:
        raise UsageError("give --address http://HEAD:8265 (the Ray dashboard of the cluster) or set RAY_API_SERVER_ADDRESS")
    try:
        submission = jobs.prepare_submission(
            args.stage,
            args.address,
            args.config,
            stage_args,
            args.submission_id,
            args.num_cpus,
            args.num_gpus,
            args.working_dir,
            args.data_root,
        )
        if jobs.DATA_ROOT_ENV in submission.runtime_env.get("env_vars", {}):
            _print(f"relative paths of the job resolve against {submission.runtime_env['env_vars'][jobs.DATA_ROOT_ENV]}")
        client = jobs.connect(args.address)
        outcome = jobs.submit(client, submission, log=_print)
    except jobs.JobSubmitError as error:
        raise UsageError(str(error)) from None
    if not args.wait:
        _print(f"follow it: ray job logs --follow {outcome.submission_id} --address {args.address}  (or rerun this with --wait)")
        return 0
    try:
        return jobs.wait_for_job(client, outcome.submission_id, log=_print)
    except jobs.JobSubmitError as error:
        raise UsageError(f"{error}; the job keeps running (`ray job logs --follow {outcome.submission_id}` follows it)") from None


def _add_submit_command(add_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """Add `vf3d submit` with the sub-parsers' `add_parser`."""
    stages = specs.JOB_STAGES
    command = add_parser(
        "submit",
        allow_abbrev=False,
        usage="vf3d submit STAGE --address URL [--wait] [--submission-id ID] [--num-cpus N] [--num-gpus N] [--config JOBFILE] "
        "[--working-dir DIR] [--data-root DIR] [-- STAGE-ARGS...]",
        help="run a pipeline stage as a Ray job on a cluster (JobSubmissionClient)",
        description="Submit jobs/STAGE.py to a Ray cluster's job server with the repository as working_dir and the vf3d package as "
        "py_modules. The submission id is derived from the stage, its arguments and the job file, so submitting the same thing again "
        "reports the existing job instead of starting another. Stage arguments (after `--`) override the job file's `args`; relative "
        "paths in either resolve on the cluster against --data-root.",
        epilog="example: vf3d submit render-assets --address http://127.0.0.1:8265 --config jobs/configs/render-assets-debug.yaml --wait "
        "-- --out job-output/orbits",
    )
    command.add_argument("stage", metavar="STAGE", help=f"{', '.join(stages[:-1])} or {stages[-1]}")
    _add_submit_options(command)
    command.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


# --------------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The full `vf3d` argument parser: one sub-command per spec in vf3d.specs, and submit."""
    parser = argparse.ArgumentParser(prog="vf3d", description="vf3d: an open, scalable VFusion3D platform (image → 3D on Ray).")
    parser.add_argument("--version", action="version", version=f"vf3d {__version__}")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help=f"show Ray's own INFO logs (start-up, Ray Data progress lines, Train and Serve messages); same as {VERBOSE_ENV}=1",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for spec in specs.SPECS.values():
        if spec is specs.Demo:  # `vf3d --help` has always listed submit here, after the stages
            _add_submit_command(commands.add_parser)
        specs.add_arguments(commands.add_parser(spec.command, help=spec.help, description=spec.description), spec)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vf3d` console script."""
    args = build_parser().parse_args(argv)
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # read where each local cluster is started (vf3d.ray_runtime)
    if args.command != "submit":
        return specs.run_command(specs.from_namespace(args), log=_print)
    try:
        return _submit(args)
    except specs.input_errors() as error:
        specs.report_input_error(args.command, error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
