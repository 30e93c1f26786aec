"""Run plumbing: what every entry point needs around the method, and nothing of the method itself.

- :mod:`~audiothink.plumbing.cli`: config composition, did-you-mean for overrides, the one-line error and exit 2.
- :mod:`~audiothink.plumbing.validate`: config checks that need no data and no model, run before anything loads.
- :mod:`~audiothink.plumbing.errors`: the user-error exceptions entry points print as one line.
- :mod:`~audiothink.plumbing.rundir`: claiming a run folder (lock, never removing another run's folder).
- :mod:`~audiothink.plumbing.runfiles`: files a run writes beside its checkpoints (config, metrics.jsonl, ...).
- :mod:`~audiothink.plumbing.checkpoints`: checkpoint checks, atomic saves, resume ownership.
- :mod:`~audiothink.plumbing.resume_config`: ``resume=true`` takes the run's own config.
- :mod:`~audiothink.plumbing.sampler`: the training sampler, whose epoch order a resume draws again.
- :mod:`~audiothink.plumbing.console`: the console line, progress and warnings policy.
- :mod:`~audiothink.plumbing.health`: steps without learning signal, said while training.
- :mod:`~audiothink.plumbing.sharding`: DDP / FSDP / ZeRO launches and saving sharded models.
"""
