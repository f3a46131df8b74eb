"""Ray Train + DeepSpeed training harness shared by the video model and the reconstructor.

Both trainers are a `TrainTask` (vf3d.training.loop) run by one skeleton, `run_loop`:

    class MyTask(TrainTask):                      # built on every worker as MyTask(config, training, rank)
        label = "my-command"                      # the GPU check's "my-command worker"
        def build_model(self): ...                # under torch.manual_seed(training.run.seed), on every rank
        def start(self, engine, step): ...        # data, losses, generators (after restore)
        def train_step(self, engine, step):       # forward, engine.backward(loss), engine.step()
            return {"loss": ..., **terms}
        # optional: begin_step, stage_ends, log (+ log_every_n_steps), validate (+ validate_every_n_steps),
        # checkpoint_metrics, checkpoint_extra, finish (the return value), export (rank 0)

    def train_loop_per_worker(config):
        return run_loop(MyTask, config)

`run_loop` does, with the harness below (everything arrives through `config`):

    training = training_config_from(config)
    engine = initialize(model, training)          # DeepSpeed engine: ZeRO, precision, AdamW, schedule
    step = restore(engine)                        # 0, or the step of the latest checkpoint
    while step < training.run.max_steps:
        inject_fault_if_due(training, step + 1)
        terms = task.train_step(engine, step); step += 1
        # log every run.log_every_n_steps, validate every validation.every_n_steps, and
        if step % training.checkpoint.every_n_steps == 0 or step == training.run.max_steps or task.stage_ends(step):
            save(engine, step, task.checkpoint_metrics(...), extra=task.checkpoint_extra())
    # rank 0: task.export(ray.train.get_checkpoint()) → consolidate(checkpoint): full fp32 state dict

and the driver launches it with `run_training(train_loop_per_worker, loop_config, training, datasets)`
(`use_default_storage` and `run_summary` hold what the drivers share around it).
Submodules import ray, torch and deepspeed only inside their functions, so importing this package
is cheap.
"""

from vf3d.training.checkpointing import CheckpointError, consolidate, read_metadata, restore, save
from vf3d.training.deepspeed_setup import build_deepspeed_config, initialize, parameter_groups
from vf3d.training.fault_injection import inject_fault_if_due
from vf3d.training.loop import LoopState, TrainTask, Window, run_loop, run_summary, use_default_storage
from vf3d.training.runner import TrainingRunFailed, batches_forever, run_training, training_config_from

__all__ = [
    "CheckpointError",
    "LoopState",
    "TrainTask",
    "TrainingRunFailed",
    "Window",
    "batches_forever",
    "build_deepspeed_config",
    "consolidate",
    "initialize",
    "inject_fault_if_due",
    "parameter_groups",
    "read_metadata",
    "restore",
    "run_loop",
    "run_summary",
    "run_training",
    "save",
    "training_config_from",
    "use_default_storage",
]
