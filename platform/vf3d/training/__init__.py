"""Ray Train + DeepSpeed training harness shared by the video model and the reconstructor.

A model's `train_loop_per_worker(config)` uses it like this (everything arrives through `config`):

    training = training_config_from(config)
    engine = initialize(model, training)          # DeepSpeed engine: ZeRO, precision, AdamW, schedule
    step = restore(engine)                        # 0, or the step of the latest checkpoint
    while step < training.run.max_steps:
        inject_fault_if_due(training, step + 1)
        loss = ...; engine.backward(loss); engine.step(); step += 1
        if step % training.checkpoint.every_n_steps == 0 or step == training.run.max_steps:
            save(engine, step, {"loss": loss.item()}, extra={"config": ...})
    # rank 0: consolidate(ray.train.get_checkpoint()) → full fp32 state dict for export

and the driver launches it with `run_training(train_loop_per_worker, loop_config, training, datasets)`.
Submodules import ray, torch and deepspeed only inside their functions, so importing this package
is cheap.
"""

from vf3d.training.checkpointing import CheckpointError, consolidate, read_metadata, restore, save
from vf3d.training.deepspeed_setup import build_deepspeed_config, initialize, parameter_groups
from vf3d.training.fault_injection import inject_fault_if_due
from vf3d.training.runner import TrainingRunFailed, batches_forever, run_training, training_config_from

__all__ = [
    "CheckpointError",
    "TrainingRunFailed",
    "batches_forever",
    "build_deepspeed_config",
    "consolidate",
    "initialize",
    "inject_fault_if_due",
    "parameter_groups",
    "read_metadata",
    "restore",
    "run_training",
    "save",
    "training_config_from",
]
