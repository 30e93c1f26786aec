"""The fast HF rollout: a static KV cache, a torch.compile'd decode step, and where the compiled work is kept.

2.6x plain `generate` for Qwen2-Audio-7B on an H100 (bench/RESULTS.md). `AudioGRPOTrainer(fast_generation=True)`
(``rollout.fast``) and ``trainer.enable_fast_generation()`` switch it on through :func:`enable_fast_generation`;
:func:`use_compile_cache` points torch.compile's on-disk caches at a folder that outlives the run, so the next
run of the same model shape skips code generation and kernel compilation.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_COMPILE_CACHE", "enable_fast_generation", "use_compile_cache"]

# Default home of the compile caches (rollout.compile_cache_dir: null): outside any run folder, so that every
# run of the same model shape on this machine (or on a shared home) finds what an earlier run compiled.
DEFAULT_COMPILE_CACHE = "~/.cache/audiothink/inductor"


def use_compile_cache(directory: str | os.PathLike | None = None) -> str:
    """Point torch.compile's on-disk caches at `directory` and return the folder used.

    torch.compile (inductor) keeps compiled graphs (its FX graph cache and AOTAutograd cache) and the
    Triton / C++ kernels under ``TORCHINDUCTOR_CACHE_DIR``; by default that is ``/tmp/torchinductor_<user>``,
    which a reboot or a fresh container empties. Which folder, in this order: `directory` when given; else a
    ``TORCHINDUCTOR_CACHE_DIR`` the user exported (one that is not torch's own default); else
    :data:`DEFAULT_COMPILE_CACHE`. Processes sharing the folder (the ranks of one launch, later runs) are
    safe: inductor writes each entry atomically. Whether the FX graph cache is on stays torch's setting
    (on by default; ``TORCHINDUCTOR_FX_GRAPH_CACHE=0`` turns it off).
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if directory is None and current and os.path.abspath(current) != os.path.abspath(default_cache_dir()):
        directory = current
    path = os.path.abspath(os.path.expanduser(str(directory if directory is not None else DEFAULT_COMPILE_CACHE)))
    os.makedirs(path, exist_ok=True)
    # read by inductor at each use (torch._inductor.runtime.cache_dir_utils.cache_dir), so setting it before
    # the first compile is enough; the Triton kernel cache follows it unless TRITON_CACHE_DIR is set
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    if path != (os.path.abspath(current) if current else None):
        logger.info("torch.compile caches: %s", path)
    return path


def enable_fast_generation(trainer, bucket: int = 64, compile_cache_dir: str | os.PathLike | None = None) -> str:
    """Static KV cache + torch.compile'd decode step for `trainer`'s HF rollout (GPU); returns the compile cache folder.

    `trainer`: a GRPOTrainer (its ``generation_config`` and ``pad_to_multiple_of`` are set). The cache's shape
    is the padded prompt length + max_new_tokens and a new shape recompiles (about a minute at 7B), so
    prompts are padded to multiples of `bucket` tokens (unless the config already set a multiple).

    What is compiled, and when (transformers 5.23 + torch 2.13, checked on CPU in
    tests/test_fast_rollout.py): later steps reuse the compiled forward, and so does another trainer in
    the same process, even on another model object of the same architecture (dynamo's guards are on
    shapes and types). The first bucket compiles a graph for its exact shapes; the
    second compiles once more with the changed sizes made symbolic (dynamo's automatic dynamic shapes),
    and that graph then serves every later bucket without compiling. transformers never shrinks a model's
    static cache (`_previous_max_cache_length`): after a longer bucket, every rollout decodes with the
    longest cache seen so far. Between processes, torch.compile's
    on-disk caches (inductor's FX graph cache, the compiled kernels) are reused from `compile_cache_dir`
    (see :func:`use_compile_cache`): the next run of the same model shape skips code generation and
    kernel compilation, though dynamo still traces the model once.
    """
    trainer.generation_config.cache_implementation = "static"
    trainer.generation_config.disable_compile = False
    trainer.pad_to_multiple_of = trainer.pad_to_multiple_of or bucket
    return use_compile_cache(compile_cache_dir)
