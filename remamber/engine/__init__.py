"""Training, evaluation, metrics, checkpoints and torch.distributed glue."""
