"""Training: the LightningModule (``module``), losses, schedules, callbacks, crash-safe checkpoints,
precision resolution and the Hydra sweep callback. Import from the submodules."""
