"""What a training run shows: one compact line per logging step, the same lines in ``train.log``, no noise.

TRL's default console prints a 37-key dict of quoted numbers every logging step, a progress bar whose
escape codes end up in any redirected log, and the same harmless warnings on every run; ``train.log`` got
only audiothink's own four lines. Here:

* :class:`audiothink.plumbing.progress.ProgressLine` replaces the Trainer's progress bar and dict printer with one
  line per logging step (:func:`audiothink.plumbing.progress.use_run_console`, called by ``audiothink.train``; a
  trainer built from Python keeps transformers' own console)::

    step 10/250 | reward 0.804 | adaptive_think 0.333 format 0.943 | think 32.7% | accuracy 66.1% | kl 0.0012 \
| entropy 0.376 | clipped 0.0% | 1.13 s/step | ETA 4m31s

  (on the toy ``think 32.7% (inconsistent 1.2%, invalid 3.4%)``: of the thought-out completions, the share whose
  thought concludes another option than the answer, and the share whose chain breaks the task's rule; and the
  causes of a step without learning signal, from :mod:`audiothink.plumbing.health`). Every metric still goes to
  ``metrics.jsonl`` and TensorBoard.
* :func:`setup_console` routes transformers' and TRL's log records through the run's handlers (so
  ``train.log`` holds what the console showed, without progress-bar control codes), turns off the library
  progress bars, and filters the known-harmless warnings, once, here, each with the reason. Under a
  multi-process launch (torchrun, accelerate launch) the start-up and progress lines come from the main process
  alone (:class:`MainProcessOnly`); every process's warnings and errors still show, each with its rank.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings

__all__ = ["setup_console", "ConsoleFormatter", "MainProcessOnly", "format_duration", "process_rank"]

# (category, message regex, why it is harmless). Matched with warnings.filterwarnings, i.e. at the start of
# the message.
KNOWN_HARMLESS = [
    (UserWarning, r"'pin_memory' argument is set as true but no accelerator is found",
     "torch's DataLoader on a CPU-only machine: the Trainer asks for pinned memory, which only matters with a GPU"),
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated",
     "raised inside TRL 1.16's GRPOTrainer (it still calls the old name); nothing in audiothink calls it"),
    (FutureWarning, r"`gradient_checkpointing` is deprecated and will be removed in v6",
     "TRL 1.16's GRPOConfig reads the old field name; audiothink's configs set activation_checkpointing"),
]


def process_rank() -> tuple[int, int]:
    """(global rank, world size) as the launchers set them (RANK, WORLD_SIZE) before torch.distributed exists."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class MainProcessOnly(logging.Filter):
    """On a process other than the main one (rank 0), keep only warnings and errors.

    Every process of a launch runs the same start-up (data, model, held-out scoring) and would print each
    line once per rank; the main process's lines say it for all. A warning or an error may be one process's
    own, so those pass on every rank (:class:`ConsoleFormatter` names the rank).
    """

    def __init__(self, rank: int | None = None):
        super().__init__()
        self.rank = process_rank()[0] if rank is None else rank

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or record.levelno >= logging.WARNING


def quiet_known_warnings() -> None:
    """Filter the warnings listed in KNOWN_HARMLESS (and nothing else)."""
    for category, message, _why in KNOWN_HARMLESS:
        warnings.filterwarnings("ignore", message=message, category=category)


def setup_console(libraries: bool = True) -> None:
    """One console for the whole run: library records through the run's handlers, no bars, no known noise.

    ``libraries=False``: the run's handlers and warnings only, importing neither transformers nor torch (what the
    config checks need, in a fraction of a second); a later call with ``libraries=True`` adds the rest (calls
    repeat nothing)."""
    quiet_known_warnings()
    # one copy of each start-up line per launch, not one per process (warnings and errors: every process's)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, MainProcessOnly) for f in handler.filters):
            handler.addFilter(MainProcessOnly())
    logging.captureWarnings(True)  # warnings.warn(...) that remain are logged, not printed raw to stderr
    if not libraries:
        return
    import transformers

    import torch

    if not torch.cuda.is_available():
        # DeepSpeed (installed with the deepspeed extra) picks its CPU accelerator on a machine without CUDA
        # anyway; naming it skips the "Setting accelerator to CPU" warning it prints to stdout on every run
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # transformers' records (e.g. a checkpoint warning) reach the root handlers: the console and train.log
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()
    # "Loading weights" / "Writing model shards" bars: carriage returns and cursor codes in every captured log
    transformers.utils.logging.disable_progress_bar()


class ConsoleFormatter(logging.Formatter):
    """``message`` for audiothink's progress and summary lines; ``level name: message`` for everything else.

    ``timestamps=True`` (train.log) prefixes the time of day. Under a multi-process launch, a record that is
    not an audiothink line names the process it came from (``warning: rank 1: ...``).
    """

    def __init__(self, timestamps: bool = False):
        super().__init__()
        self.timestamps = timestamps
        rank, world = process_rank()
        self.rank = f"rank {rank}: " if world > 1 else ""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if not (record.levelno == logging.INFO and record.name.startswith("audiothink")):
            message = f"{record.levelname.lower()}: {self.rank}{record.name}: {message}"
        if self.timestamps:
            message = f"[{time.strftime('%H:%M:%S', time.localtime(record.created))}] {message}"
        return message


def format_duration(seconds: float) -> str:
    """``4m31s``, ``1h02m``, ``12s``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
