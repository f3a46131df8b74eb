"""Deliberate worker crashes, once per run, to prove that training recovers from them.

A worker that reaches `fault_injection.fail_at_step` on rank `fault_injection.fail_rank` exits the
process abruptly (`os._exit(1)`: no exception, no cleanup, as when a node dies). Before exiting it
writes a marker file into the run's storage directory; the restarted worker group (and any later
rerun of the same run) sees the marker and carries on, so the fault fires exactly once per run.
The worker first waits for its checkpoints to be committed, so the run resumes from the last
checkpoint before the fault's step however long uploads take.
The marker lives next to the checkpoints, on the same (possibly remote) filesystem, because the
restarted worker may land on a different node.
"""

from __future__ import annotations

import os

from vf3d.training.config import TrainingConfig

FAULT_MARKER_FILE = "vf3d_fault_injected"


def inject_fault_if_due(config: TrainingConfig, step: int) -> None:
    """Exit this worker process if the configured fault is due at `step` and has not fired yet.

    `step` is the 1-based number of the optimizer step the worker is about to run. Call it in every
    worker once per step, before the step's collectives, so that the other ranks block in a
    collective and Ray Train sees a dead worker rather than a clean exit.
    """
    fault = config.fault_injection
    if fault.fail_at_step is None or step != fault.fail_at_step:
        return
    import pyarrow.fs
    import ray.train

    context = ray.train.get_context()
    if context.get_world_rank() != fault.fail_rank:
        return
    # get_storage() is a Ray DeveloperAPI; it is the one place that knows the resolved run
    # directory and its filesystem (local, NFS or a bucket).
    storage = context.get_storage()
    filesystem, marker = storage.storage_filesystem, f"{storage.experiment_fs_path}/{FAULT_MARKER_FILE}"
    if filesystem.get_file_info(marker).type != pyarrow.fs.FileType.NotFound:
        return
    # Die between checkpoints, not during an upload: with async uploads the latest checkpoint may
    # still be on its way, and the drill's resume point (the last checkpoint before this step)
    # would depend on how fast the store is. A crash mid-upload loses that one checkpoint, which
    # `checkpoint.upload` documents; this drill shows the restart, deterministically.
    from vf3d.training.checkpointing import committed_checkpoint

    committed_checkpoint()
    filesystem.create_dir(storage.experiment_fs_path, recursive=True)
    with filesystem.open_output_stream(marker) as stream:
        stream.write(f"rank {fault.fail_rank} exited at step {step}\n".encode())
    os._exit(1)
