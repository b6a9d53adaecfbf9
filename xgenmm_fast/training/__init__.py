"""Sequence-packed SFT on DeepSpeed: config, schedule, batches, checkpoints, metrics, the loop."""
