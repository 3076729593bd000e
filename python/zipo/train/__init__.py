"""Training: the loss, the epoch loop, evaluation, checkpoints, devices and processes."""
