"""Orbit-shard schema, readers and writers, asset loading and orbit rendering (no ray, no deepspeed)."""
