"""The toy with the real Whisper 30 s encoder window: the checkpoint stock vLLM accepts.

vLLM's Qwen2-Audio input schema fixes the window at 30 s (`input_features` of 3000 mel frames; the shipped
toy has 1 s, 100 frames, and vLLM refuses it: `input_features dim[2] expected 3000, got 100`). vLLM's model
code is not patched for the toy (what runs here must be what runs at 7B), so the vLLM rollouts use a copy
of the toy with the 30 s window, derived from the shipped checkpoint when first needed and cached:

- `audio_config.max_source_positions` 50 -> 1500 (encoder positions of a 30 s window, as Qwen2-Audio-7B);
- the feature extractor's `chunk_length` 1 -> 30 s, `n_samples` 480000, `nb_max_frames` 3000;
- `audio_tower.embed_positions.weight` (an `nn.Embedding` with `requires_grad=False`, left at its
  N(0, 0.02) initialisation by the warm start, never trained) keeps its 50 rows and gets 1450 more seeded
  N(0, 0.02) rows. Only the rows of a clip's real frames matter: HF and vLLM both mask the padded frames
  in the encoder's attention and drop their outputs, and the toy's clips (< 1 s) give the same features
  under a 30 s pad. So the copy answers as the toy does (bench/vllm_cpu/FINDINGS.md section 4: the same
  greedy completions on 16 held-out items, teacher-forced log-probs corr 1.000000, mean |diff| 1.5e-6).

Cost: the 30 s window makes every HF pass over the audio ~19x slower on CPU than the 1 s toy (FINDINGS
section 4), so the toy itself keeps its 1 s window and only `rollout.engine=vllm` runs train on the copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

WINDOW_SECONDS = 30
POSITIONS = 1500  # encoder positions of a 30 s window: 3000 mel frames after the stride-2 convolution
_SEED = 1234  # the new positional rows: the same copy on every machine

# Where the copy is kept (one folder per source checkpoint, named by its content hash).
DEFAULT_CACHE = "~/.cache/audiothink/toy30"


def _source_hash(src: Path) -> str:
    digest = hashlib.sha256()
    for name in ("config.json", "processor_config.json", "model.safetensors"):
        digest.update((src / name).read_bytes())
    return digest.hexdigest()[:16]


def toy_30s_copy(src: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of the 30 s-window copy of the toy checkpoint `src` (default: the shipped toy), made on
    first use (~2.5 MB, a few seconds) under `cache_dir` (default ~/.cache/audiothink/toy30) and reused
    after that while `src`'s config, processor config and weights are unchanged.

    The copy is written to a temporary folder and renamed into place, so concurrent callers (test sessions,
    the ranks of a launch) never read a half-written one. Raises FileNotFoundError when `src` is not a
    checkpoint folder (no config.json / processor_config.json / model.safetensors).
    """
    import torch
    from safetensors.torch import load_file, save_file

    from audiothink.toy import TOY_MODEL_DIR

    src = Path(src or TOY_MODEL_DIR)
    dst = Path(cache_dir or DEFAULT_CACHE).expanduser() / f"toy30-{_source_hash(src)}"
    if (dst / "model.safetensors").is_file():
        return dst
    tmp = dst.with_name(f"{dst.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    config = json.loads((tmp / "config.json").read_text())
    config["audio_config"]["max_source_positions"] = POSITIONS
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    processor = json.loads((tmp / "processor_config.json").read_text())
    fe = processor["feature_extractor"]
    hop = fe.get("hop_length", 160)
    fe.update(chunk_length=WINDOW_SECONDS, n_samples=WINDOW_SECONDS * fe["sampling_rate"],
              nb_max_frames=WINDOW_SECONDS * fe["sampling_rate"] // hop)
    (tmp / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    weights = load_file(tmp / "model.safetensors")
    old = weights["audio_tower.embed_positions.weight"]
    generator = torch.Generator().manual_seed(_SEED)
    new = torch.randn(POSITIONS - old.shape[0], old.shape[1], generator=generator, dtype=old.dtype) * 0.02
    weights["audio_tower.embed_positions.weight"] = torch.cat([old, new]).contiguous()
    save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
    try:
        os.replace(tmp, dst)
    except OSError:  # another process renamed its copy first: the same bytes
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def vllm_model_path(path: str | os.PathLike) -> str:
    """The checkpoint a `rollout.engine=vllm` run loads for model.path `path`: the 30 s copy when `path` is
    the shipped toy (see `toy_30s_copy`), `path` itself otherwise (a real checkpoint has the real window)."""
    from audiothink.toy import TOY_MODEL_DIR

    p = Path(path).expanduser()
    if p.is_dir() and p.resolve() == TOY_MODEL_DIR.resolve():
        return str(toy_30s_copy())
    return str(path)
