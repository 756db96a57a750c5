"""Hydra plugin of warmup-lab: the resumable, failure-tolerant sweeper (``hydra/sweeper: resumable``)."""
