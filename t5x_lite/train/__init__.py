"""Training: partitioning, optimizers, losses, state, checkpoints, metrics, the trainer."""
