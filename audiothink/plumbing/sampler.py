"""The training sampler: TRL's RepeatSampler, with an epoch order that a resume draws again.

Used by ``AudioGRPOTrainer._get_train_sampler``; checked by tests/plumbing/test_checkpoints.py (a run resumed in a later
epoch sees the prompts an uninterrupted run sees).
"""

from __future__ import annotations

import torch
from trl.trainer.utils import RepeatSampler

__all__ = ["EpochRepeatSampler"]


class EpochRepeatSampler(RepeatSampler):
    """TRL's RepeatSampler, plus ``set_epoch``: epoch e draws the order an uninterrupted run draws in epoch e.

    TRL's sampler shuffles with one generator that advances pass after pass, so a resume in epoch e (a fresh
    sampler) would replay epoch 0's order. ``set_epoch`` (the Trainer calls it every epoch) re-seeds the
    generator and advances it by e permutations, exactly what e earlier passes consumed: an uninterrupted
    run is unchanged, a resumed one sees the same prompts.
    """

    @classmethod
    def like(cls, sampler: RepeatSampler) -> "EpochRepeatSampler":
        return cls(data_source=sampler.data_source, mini_repeat_count=sampler.mini_repeat_count,
                   batch_size=sampler.batch_size, repeat_count=sampler.repeat_count, shuffle=sampler.shuffle,
                   seed=sampler.seed)

    def set_epoch(self, epoch: int) -> None:
        if self.seed is None or not self.shuffle:
            return
        self.generator.manual_seed(self.seed)
        if self.shuffle:
            for _ in range(epoch):
                torch.randperm(self.num_samples, generator=self.generator)
