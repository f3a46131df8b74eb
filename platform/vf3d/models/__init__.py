"""Pure single-device models (no ray, deepspeed or torch.distributed imports here)."""
