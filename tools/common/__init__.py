"""Helpers shared by both stages and the commands: flags and configs, files, devices, training loop,
distributed training, image grids, validation splits, optimizers. Nothing here is a command."""
