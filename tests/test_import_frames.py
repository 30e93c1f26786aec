"""A function that imports audiothink.trainer and builds something must not have its frame pinned by an import
error vLLM keeps (audiothink.vllm_rollout.unpin_import_frames): found as bench/gpu_step.py's first model staying
alive beside the second when the test ran alone (in the whole suite an earlier test had imported the trainer)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import gc, sys, weakref

class Big:  # stands in for a trainer
    pass

def build():
    import audiothink.trainer  # the first import: TRL, then vLLM
    big = Big()
    return weakref.ref(big)

ref = build()
gc.collect()
mod = sys.modules.get("vllm.multimodal.media.audio")
kept = getattr(mod, "_torchcodec_import_exc", None)
print("kept-error", type(kept).__name__, "alive", ref() is not None)
"""


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vLLM installed (the vLLM extra)")
def test_the_frame_that_first_imported_the_trainer_is_freed():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("kept-error")][-1]
    assert line.endswith("alive False"), line
