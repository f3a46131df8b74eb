"""DeepSpeed engine construction from a `TrainingConfig`: JSON config, AdamW groups, LR schedule.

This is the only place (with `checkpointing`) that imports deepspeed, and it does so inside
`initialize`, in the training worker: the CPU accelerator must be chosen through `DS_ACCELERATOR`
before deepspeed is first imported, and drivers, CLIs and Serve replicas never pay for the import.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import TYPE_CHECKING, Any

from vf3d.training.config import OptimizerConfig, TrainingConfig

if TYPE_CHECKING:
    import torch
    from deepspeed import DeepSpeedEngine


def resolve_precision(precision: str, use_cuda: bool) -> str:
    """ "auto" → "bf16" on CUDA, "fp32" on the CPU; explicit choices pass through."""
    if precision == "auto":
        return "bf16" if use_cuda else "fp32"
    return precision


def build_deepspeed_config(config: TrainingConfig, use_cuda: bool) -> dict[str, Any]:
    """The DeepSpeed JSON config for `config`; the optimizer and scheduler are ours, not DeepSpeed's.

    The global batch (micro batch × accumulation × world size) is left to DeepSpeed, which knows the
    world size of the process group it joins.
    """
    zero: dict[str, Any] = {"stage": config.deepspeed.zero_stage}
    # On the CPU the optimizer state already lives in host memory: offloading would only add copies.
    if config.deepspeed.offload_optimizer and use_cuda:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": config.run.batch_size,
        "gradient_accumulation_steps": config.deepspeed.gradient_accumulation_steps,
        "gradient_clipping": config.optimizer.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": resolve_precision(config.deepspeed.precision, use_cuda) == "bf16"},
        # Our torch AdamW is not on DeepSpeed's list of ZeRO-tested optimizers, and with offloading
        # DeepSpeed would otherwise insist on its compiled DeepSpeedCPUAdam.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        # Metrics are reported through Ray Train; DeepSpeed's own periodic prints are noise.
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: decay on matrices, none on biases, norm weights and 1-D parameters.

    Frozen parameters (requires_grad=False, e.g. spatial layers while fine-tuning temporal ones)
    are left out; empty groups are dropped because ZeRO cannot flatten an empty group.
    """
    no_decay_ids = set()
    for module in model.modules():
        # LayerNorm, GroupNorm, BatchNorm*, RMSNorm and the diffusers variants: their weights are
        # scales, not projections, and decaying them towards zero fights the normalisation.
        is_norm = "Norm" in type(module).__name__
        for name, parameter in module.named_parameters(recurse=False):
            if is_norm or name == "bias" or parameter.ndim < 2:
                no_decay_ids.add(id(parameter))
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if id(parameter) in no_decay_ids else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def learning_rate_multiplier(step: int, optimizer: OptimizerConfig, max_steps: int) -> float:
    """Factor applied to `optimizer.lr` at optimizer step `step` (0-based): linear warm-up, then
    constant or a half-cosine down to `min_lr_ratio` at `max_steps`."""
    if step < optimizer.warmup_steps:
        return (step + 1) / optimizer.warmup_steps
    if optimizer.schedule == "constant":
        return 1.0
    decay_steps = max(1, max_steps - optimizer.warmup_steps)
    progress = min(1.0, (step - optimizer.warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return optimizer.min_lr_ratio + (1.0 - optimizer.min_lr_ratio) * cosine


def _skip_shared_memory_comm(deepspeed) -> None:
    """Make DeepSpeed's CPU communication backend use gloo instead of building its shared-memory op.

    DeepSpeed builds that C++ op the first time a CPU process group starts, if its compatibility
    probe says the op can be built; marking it incompatible in the probe's table (a module-level
    dict DeepSpeed consults, per process) is the one switch it offers. Nothing else changes:
    torch.distributed's gloo all-reduce is what runs instead.
    """
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def initialize(model: torch.nn.Module, config: TrainingConfig) -> DeepSpeedEngine:
    """Wrap `model` in a DeepSpeed engine with our AdamW and warm-up/cosine schedule.

    Call it inside a Ray Train worker: Ray has already initialised torch.distributed (gloo on the
    CPU, nccl on GPUs) and DeepSpeed adopts that process group instead of creating its own. The
    engine owns the device placement, ZeRO partitioning and precision; train with
    `engine(inputs)`, `engine.backward(loss)`, `engine.step()` (which also steps the schedule).
    """
    import torch

    use_cuda = torch.cuda.is_available()
    if not use_cuda:
        # DeepSpeed picks its accelerator once, on first use; say so explicitly instead of relying
        # on its CUDA probe failing (which also logs a warning in every worker).
        os.environ["DS_ACCELERATOR"] = "cpu"
    import deepspeed

    # DeepSpeed's ZeRO gathers call a torch.distributed function that torch deprecated: one
    # FutureWarning per call from every rank, about code that is not ours to change.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.all_gather_into_tensor` is deprecated", category=FutureWarning)
    if not use_cuda and not config.deepspeed.cpu_shared_memory_comm:
        _skip_shared_memory_comm(deepspeed)
    settings = config.optimizer
    optimizer = torch.optim.AdamW(
        parameter_groups(model, settings.weight_decay),
        lr=settings.lr,
        betas=tuple(settings.betas),
        eps=settings.eps,
    )

    def warmup_then_decay(wrapped_optimizer):
        # DeepSpeed calls this with its (possibly ZeRO-wrapped) optimizer, so the schedule drives
        # the learning rate of the parameter groups that are actually stepped.
        return torch.optim.lr_scheduler.LambdaLR(
            wrapped_optimizer, lambda step: learning_rate_multiplier(step, settings, config.run.max_steps)
        )

    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=warmup_then_decay,
        config=build_deepspeed_config(config, use_cuda),
        # Ray Train created the process group; DeepSpeed must join it, never start another one.
        dist_init_required=not torch.distributed.is_initialized(),
    )
    return engine
