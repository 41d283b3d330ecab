"""Trainers: one base that owns the training loop, checkpoints, EMA, AMP, DDP and logging; small subclasses."""
