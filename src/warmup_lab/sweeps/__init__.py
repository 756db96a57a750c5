"""Many runs: ``jobs`` (a run's identity from its overrides, what is done, resume plans,
summaries), ``grouping`` (which runs train together, ``launcher=fused``), ``study`` (rounds of
seeds until a claim is decided), ``launch`` (threads and GPUs per job for the local launchers).
The Hydra plugins live in ``hydra_plugins/warmup_lab_sweeper``."""
