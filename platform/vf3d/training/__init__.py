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
            save(engine, step, task.checkpoint_metrics(...), extra=task.checkpoint_extra(), upload=training.checkpoint.upload)
    # rank 0: task.export(committed_checkpoint()) → consolidate(checkpoint): full fp32 state dict

and the driver launches it with `run_training(train_loop_per_worker, loop_config, training, datasets)`
(`use_default_storage` and `run_summary` hold what the drivers share around it).
Submodules import ray, torch and deepspeed only inside their functions, so importing this package
is cheap.
"""

_SOURCE = {
    "CheckpointError": ".checkpointing",
    "committed_checkpoint": ".checkpointing",
    "consolidate": ".checkpointing",
    "read_metadata": ".checkpointing",
    "restore": ".checkpointing",
    "save": ".checkpointing",
    "build_deepspeed_config": ".deepspeed_setup",
    "initialize": ".deepspeed_setup",
    "parameter_groups": ".deepspeed_setup",
    "inject_fault_if_due": ".fault_injection",
    "LoopState": ".loop",
    "TrainTask": ".loop",
    "Window": ".loop",
    "run_loop": ".loop",
    "run_summary": ".loop",
    "use_default_storage": ".loop",
    "TrainingRunFailed": ".runner",
    "batches_forever": ".runner",
    "run_training": ".runner",
    "training_config_from": ".runner",
}
"""Each public name → the submodule that defines it."""

__all__ = [
    "CheckpointError",
    "LoopState",
    "TrainTask",
    "TrainingRunFailed",
    "Window",
    "batches_forever",
    "build_deepspeed_config",
    "committed_checkpoint",
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


def __getattr__(name: str):
    # Lazy (PEP 562): importing the package, or its light `config` module, must not import torch.
    if name not in _SOURCE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_SOURCE[name], __name__), name)
