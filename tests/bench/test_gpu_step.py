"""bench/gpu_step.py's code paths (model building, the training loop, every part, the JSON) at toy size on CPU.

The benchmark itself needs a GPU and full-size models; this runs the same script with the published
dimensions shrunk, so a broken build, part or report line shows up here and not on a borrowed GPU. On CPU
transformers does not compile generate, so the fast path is an eager static cache (the JSON says so); the
compile cache itself is tested in tests/test_fast_rollout.py.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
from transformers.models.qwen2 import modeling_qwen2

from tests.helpers import FakeRMSNorm, install_fake_liger  # Liger's RMSNorm in plain torch; the stand-in package
from tests.helpers import load_bench_script

BOTH = ["qwen2_audio_7b", "qwen2_5_omni_7b"]
TOY_ARGS = ["--allow-cpu", "--prompts", "2", "--G", "2", "--audio-seconds", "1", "--new-tokens", "4", "--lora-r",
            "4", "--micro", "2"]


@pytest.fixture()
def bench(monkeypatch):
    # the fast path points torch.compile's cache at a folder of its own: put the variable back afterwards
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    module = load_bench_script("gpu_step")
    small_text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "vocab_size": 1024}
    audio = module.QWEN2_AUDIO_7B
    monkeypatch.setattr(module, "QWEN2_AUDIO_7B", {
        "audio_config": audio["audio_config"] | {"encoder_layers": 1, "encoder_attention_heads": 2,
                                                 "encoder_ffn_dim": 32, "d_model": 16},
        "text_config": audio["text_config"] | small_text,
    })
    omni = module.QWEN2_5_OMNI_7B_THINKER
    monkeypatch.setattr(module, "QWEN2_5_OMNI_7B_THINKER", {
        "audio_config": omni["audio_config"] | {"encoder_layers": 1, "encoder_attention_heads": 2,
                                                "encoder_ffn_dim": 32, "d_model": 16, "output_dim": 32},
        "vision_config": omni["vision_config"] | {"depth": 1, "hidden_size": 16, "intermediate_size": 16,
                                                  "num_heads": 2, "out_hidden_size": 32, "fullatt_block_indexes": [0]},
        "text_config": omni["text_config"] | small_text | {
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 1, 1]}},
    })
    qwen3 = module.QWEN3_OMNI_30B_A3B_THINKER
    monkeypatch.setattr(module, "QWEN3_OMNI_30B_A3B_THINKER", {
        "audio_config": qwen3["audio_config"] | {"encoder_layers": 1, "encoder_attention_heads": 2,
                                                 "encoder_ffn_dim": 32, "d_model": 16, "output_dim": 32,
                                                 "downsample_hidden_size": 8},
        "vision_config": qwen3["vision_config"] | {"depth": 1, "hidden_size": 16, "intermediate_size": 16,
                                                   "num_heads": 2, "out_hidden_size": 32, "num_position_embeddings": 16,
                                                   "deepstack_visual_indexes": [0]},
        "text_config": qwen3["text_config"] | small_text | {
            "head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 2, 2],
                                "interleaved": True, "mrope_interleaved": True}},
        "position_id_per_seconds": qwen3["position_id_per_seconds"],
    })
    return module


# -- a stand-in liger_kernel (Liger needs Triton and CUDA): the same names and constructor signatures ----------

SWAPPED_FORWARDS = []


class FakeLigerRMSNorm(FakeRMSNorm):
    def forward(self, x):
        SWAPPED_FORWARDS.append("norm")
        return super().forward(x)


class FakeLigerSwiGLUMLP(torch.nn.Module):
    def __init__(self, config, intermediate_size=None):
        super().__init__()
        size = intermediate_size or config.intermediate_size
        self.gate_proj = torch.nn.Linear(config.hidden_size, size, bias=False)
        self.up_proj = torch.nn.Linear(config.hidden_size, size, bias=False)
        self.down_proj = torch.nn.Linear(size, config.hidden_size, bias=False)

    def forward(self, x):
        SWAPPED_FORWARDS.append("mlp")
        return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


def fake_liger_rope(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
    SWAPPED_FORWARDS.append("rope")
    return _rope(q, k, cos, sin, unsqueeze_dim)


def _rope(q, k, cos, sin, unsqueeze_dim):
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return q * cos + modeling_qwen2.rotate_half(q) * sin, k * cos + modeling_qwen2.rotate_half(k) * sin


@pytest.fixture()
def fake_liger(monkeypatch):
    install_fake_liger(monkeypatch, FakeLigerRMSNorm, FakeLigerSwiGLUMLP, fake_liger_rope)
    SWAPPED_FORWARDS.clear()


@pytest.fixture()
def no_liger(monkeypatch):
    monkeypatch.setitem(sys.modules, "liger_kernel", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", None)


# -- what every run's JSON must hold -------------------------------------------------------------------------

STEP_KEYS = {"s", "rollout", "reference", "rewards", "update", "other", "prompt_tokens", "completion_tokens",
             "tokens_per_s_per_gpu", "completion_tokens_per_s_per_gpu", "peak_GiB"}


def check_required_figures(model: dict, rows: int, new_tokens: int) -> None:
    """The figures issue 12 lists that every run has (the required parts' figures)."""
    for kind in ("plain", "fast"):
        r = model["rollout"][kind]
        assert r["tok_s"] > 0 and 0 < r["pct_of_floor"] and math.isfinite(r["pct_of_floor"]), (kind, r)
        # tokens/s is the generated tokens over the rollout seconds, and % of floor the floor over them
        assert r["tok_s"] == pytest.approx(rows * new_tokens / r["s"])
        assert r["pct_of_floor"] == pytest.approx(100 * model["rollout"]["floor_s"] / r["s"])
        step = model["step"][kind]
        assert STEP_KEYS <= set(step), kind
        parts = step["rollout"] + step["reference"] + step["rewards"] + step["update"] + step["other"]
        assert parts == pytest.approx(step["s"]) and step["rollout"] > 0 and step["update"] > 0
        assert step["other"] >= 0, step  # "other" is the rest: negative means a part was counted twice
        assert step["reference"] > 0  # beta > 0: the reference pass runs every step
        assert step["completion_tokens"] == rows * new_tokens
        # real tokens only: the fast step's prompts are padded to the bucket, and that padding is not counted
        assert step["prompt_tokens"] == rows * model["shape"]["prompt_tokens"]
        assert step["tokens_per_s_per_gpu"] == pytest.approx(
            (step["prompt_tokens"] + step["completion_tokens"]) / step["s"])
        assert step["completion_tokens_per_s_per_gpu"] == pytest.approx(step["completion_tokens"] / step["s"])
    update = model["update"]
    assert update["s"] > 0 and 0 < update["mfu"] and math.isfinite(update["mfu"])
    assert update["tokens"] == model["step"]["plain"]["prompt_tokens"] + model["step"]["plain"]["completion_tokens"]
    assert "peak_GiB" in model
    fast = model["fast_path"]
    assert fast["compiled"] is False and "eager" in fast["mode"]  # CPU: said so, not pretended
    assert fast["graphs_after_first_fast_step"] == 0
    first = fast["buckets"][0]
    assert first["bucket"] % 64 == 0 and first["bucket"] >= model["shape"]["prompt_tokens"]
    assert {"first_s", "steady_s", "compile_s", "graphs", "fx_cache_hits", "fx_cache_misses"} <= set(first)


@pytest.mark.slow  # ~70 s on a loaded 2-core CPU: both models, every part
def test_toy_run_writes_every_figure_for_both_models(bench, fake_liger, tmp_path, capsys):
    out = tmp_path / "result.json"
    report = bench.main([*TOY_ARGS, "--out", str(out), "--budget-s", "1e9"], floors=(1e11, 1e12))
    on_disk = json.loads(out.read_text())
    assert on_disk["complete"] is True and set(on_disk["models"]) == set(BOTH)
    assert on_disk["models"].keys() == report["models"].keys()
    for name in BOTH:
        model = on_disk["models"][name]
        assert model["skipped"] == {}, model["skipped"]
        check_required_figures(model, rows=4, new_tokens=4)
        # Liger off and on, on the same batch
        off, on = model["update"]["liger_off"], model["update"]["liger_on"]
        assert off["tokens"] == on["tokens"] == model["update"]["tokens"]
        assert off["s"] > 0 and on["s"] > 0 and on["modules_swapped"] > 0 and on["x_off"] > 0
        # the fast path's greedy tokens equal plain generate's, on 2 prompts, for both models
        exact = model["exactness"]
        assert exact["same_tokens"] is True and len(exact["prompts"]) == 2 and exact["fast_copies_agree"] is True
        assert all(p["same"] and p["tokens"] == 4 for p in exact["prompts"])
        # the second prompt is shorter: two lengths in one batch, one bucket
        assert exact["prompt_tokens"][1] < exact["prompt_tokens"][0]
        buckets = [b["bucket"] for b in model["fast_path"]["buckets"]]
        assert buckets == [buckets[0], buckets[0] + 64, buckets[0] + 128]
        # the static cache holds the bucket + the new tokens but the last; the warm-cache rerun is at the loop's
        # shapes again, not at the longest cache the extra buckets left behind
        assert [b["cache_len"] for b in model["fast_path"]["buckets"]] == [b + 3 for b in buckets]
        warm = model["fast_path"]["warm_cache"]
        assert {"first_s", "steady_s", "fx_cache_hits"} <= set(warm) and warm["cache_len"] == buckets[0] + 3
        # G = 2 copies of each clip in the training loop: half the clip passes
        assert model["encoder"]["clips_encoded"] * 2 == model["encoder"]["clips_requested"]
        assert set(model["phase_s"]) == {"build", "train", "liger", "exactness", "bucket_b", "bucket_c", "warm_cache"}
        # one model at a time: the first one's trainer is freed before the second is built
        assert model["trainers_alive_before_build"] == 0
    # the swapped-in modules really ran (norm, MLP and RoPE)
    assert {"norm", "mlp", "rope"} <= set(SWAPPED_FORWARDS)
    assert on_disk["avqa_buckets"]["recipe"]["estimate"] is True
    assert on_disk["avqa_buckets"]["recipe"]["prompts_per_rollout"] == 2
    printed = capsys.readouterr().out
    for name in BOTH:
        assert bench.MODELS[name] in printed
    for line in ("memory-bound floor", "MFU", "fast path", "Liger off", "exactness", "tok/s per GPU",
                 "AVQA prompt buckets", f"wrote {out}"):
        assert line in printed, line


def test_liger_swap_puts_the_originals_back_and_keeps_the_numbers(bench, fake_liger):
    """The in-place swap gives the model the same function (the fake is the same math) and is undone exactly."""
    model, processor, cfg = bench.build_qwen2_audio()
    model.eval()
    before = {n: type(m) for n, m in model.named_modules()}
    ids = torch.randint(10, 300, (2, 12))
    with torch.no_grad():
        reference = model(input_ids=ids).logits
    restore, n = bench.liger_swap(model, "Qwen2AudioForConditionalGeneration")
    layers = model.config.text_config.num_hidden_layers
    assert n == 2 * layers + 1 + layers  # two norms and one MLP per layer, the final norm
    assert type(model.model.language_model.layers[0].mlp) is FakeLigerSwiGLUMLP
    # the built weights moved over, none allocated anew
    assert model.model.language_model.layers[0].mlp.gate_proj.weight.device.type == "cpu"
    with torch.no_grad():
        swapped = model(input_ids=ids).logits
    torch.testing.assert_close(swapped, reference, rtol=1e-5, atol=1e-5)
    assert {"norm", "mlp", "rope"} <= set(SWAPPED_FORWARDS)
    restore()
    assert {n: type(m) for n, m in model.named_modules()} == before
    assert modeling_qwen2.apply_rotary_pos_emb is not fake_liger_rope


def test_budget_skips_optional_parts_and_says_why(bench, no_liger, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench.tempfile, "tempdir", str(tmp_path))  # the work folders go here
    out = tmp_path / "r.json"
    report = bench.main([*TOY_ARGS, "--model", "qwen2_5_omni_7b", "--out", str(out), "--budget-s", "1"],
                        floors=(1e11, 1e12))
    model = json.loads(out.read_text())["models"]["qwen2_5_omni_7b"]
    assert report["complete"] is True
    # required: build, training loop and, for Omni, the exactness check, whatever the budget
    check_required_figures(model, rows=4, new_tokens=4)
    assert model["exactness"]["same_tokens"] is True
    skipped = model["skipped"]
    assert set(skipped) == {"liger", "bucket_b", "bucket_c", "warm_cache"}
    assert all(r.startswith("budget: ") for k, r in skipped.items() if k != "bucket_c")
    assert skipped["bucket_c"] == "needs bucket_b"
    assert "liger_on" not in model["update"]
    assert "warning: the required parts alone" in capsys.readouterr().out
    assert not list(tmp_path.glob("gpu_step_*"))  # the model's work folder is gone once it is done


def test_liger_not_installed_is_recorded(bench, no_liger, tmp_path):
    out = tmp_path / "r.json"
    bench.main([*TOY_ARGS, "--model", "qwen2_audio_7b", "--out", str(out), "--budget-s", "1e9"], floors=(1e11, 1e12))
    update = json.loads(out.read_text())["models"]["qwen2_audio_7b"]["update"]
    assert update["liger_on"].startswith("not installed")
    assert update["liger_off"]["s"] > 0


def test_budget_planner_keeps_room_for_later_required_and_more_important_parts(bench):
    now = [0.0]
    budget = bench.Budget(100.0, {"build": 10, "train": 30, "liger": 20, "exactness": 15, "bucket_b": 30,
                                  "bucket_c": 5, "warm_cache": 5}, clock=lambda: now[0])
    for m in ("a", "b"):
        budget.add(m, "build", True)
        budget.add(m, "train", True)
        for name in ("liger", "exactness", "bucket_b", "bucket_c", "warm_cache"):
            budget.add(m, name, name == "exactness" and m == "b")
    assert budget.required_total() == 10 + 30 + 10 + 30 + 15
    assert budget.decide("a", "build") is None and budget.decide("a", "train") is None
    now[0] = 40.0
    # 60 s left; model b's required parts need 55: a's Liger (20) does not fit, and the reason says what is kept
    reason = budget.decide("a", "liger")
    assert reason.startswith("budget: ~20 s needed, 60 s left") and "b:train" in reason and "b:liger" not in reason
    # a measured time replaces the estimate for the next model's part
    budget.done("build", 2.0)
    assert budget.estimate("build") == 2.0
    # 60 - (b: 2 + 30 + 15 required) = 13 s free; a's exactness (15) does not fit
    assert budget.decide("a", "exactness") is not None
    # a's bucket_c (5 s) would fit the 13 s, but b's Liger (20, more important) is kept first
    reason = budget.decide("a", "bucket_c")
    assert reason is not None and "b:liger" in reason
    # the least important part fits once nothing more important is still to come
    now[0] = 45.0
    assert budget.decide("b", "build") is None and budget.decide("b", "train") is None
    now[0] = 75.0  # 25 s left: b's exactness (15, required, after it) is kept, so b's Liger (20) does not fit
    assert "b:exactness" in budget.decide("b", "liger")
    now[0] = 1000.0  # required parts run whatever the clock says
    assert budget.decide("b", "exactness") is None
    now[0] = 90.0  # 10 s left: bucket_b (30) does not fit, bucket_c (5) does, with nothing more important to come
    assert budget.decide("b", "bucket_b") is not None
    assert budget.decide("b", "bucket_c") is None
    assert [p["state"] for p in budget.parts if p["model"] == "b"] == [
        "run", "run", "skipped", "run", "skipped", "run", "pending"]


def test_greedy_comparison_reports_where_tokens_part():
    bench = load_bench_script("gpu_step")
    same, differ = bench.compare_greedy([[1, 2, 3], [4, 5, 6]], [[1, 2, 3], [4, 7, 6]])
    assert same == {"same": True, "tokens": 3}
    assert differ == {"same": False, "first_mismatch": 1, "plain_ids": [4, 5, 6], "fast_ids": [4, 7, 6]}


def test_audio_tokens_match_both_processors(bench):
    """The AVQA estimate's audio-token count is the processors' own, for 10 s and odd lengths."""
    _, qwen, _ = bench.build_qwen2_audio()
    for name, processor in (("qwen2_audio", qwen), ("omni", None)):
        if processor is None:
            from audiothink.models import OmniAudioProcessor
            from audiothink.toy.omni import build_omni_processor
            from transformers import WhisperFeatureExtractor

            toy = build_omni_processor()
            fe = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30,
                                         n_fft=400, return_attention_mask=True)
            processor = OmniAudioProcessor(feature_extractor=fe, tokenizer=toy.tokenizer, chat_template=toy.chat_template)
        audio_id = processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
        for seconds in (10.0, 7.3, 1.0, 29.99):
            text = processor.apply_chat_template([[{"role": "user", "content": [{"type": "audio"},
                                                                               {"type": "text", "text": "q"}]}]],
                                                 tokenize=False, add_generation_prompt=True)
            enc = processor(text=text, audio=[np.zeros(int(seconds * 16000), np.float32)], sampling_rate=16000,
                            return_tensors="pt")
            assert int((enc["input_ids"] == audio_id).sum()) == bench.audio_tokens(seconds), (name, seconds)
    assert bench.audio_tokens(10.0) == 250


def test_expected_buckets():
    bench = load_bench_script("gpu_step")
    # one length: always one bucket
    one = bench.expected_buckets(bench.uniform_pmf(5, 5), 64, prompts_per_rollout=2, rollouts=1000)
    assert one == {"expected": 1.0, "min": 1, "max": 1, "p_more_than_one": 0.0}
    # lengths spread over exactly 65 values: always two buckets possible; enough rollouts hit both
    two = bench.expected_buckets(bench.uniform_pmf(0, 64), 64, prompts_per_rollout=1, rollouts=100_000)
    assert two["min"] == two["max"] == 2 and two["expected"] == pytest.approx(2.0)
    # with 2 prompts a rollout is in the lower bucket only if both prompts are: where that bucket holds one
    # length of 65, that is (1/65)^2 a rollout, and 1000 rollouts miss it most of the time
    pair = bench.expected_buckets(bench.uniform_pmf(0, 64), 64, prompts_per_rollout=2, rollouts=1000)
    assert 1.9 < pair["expected"] < 2.0
    # a spread of 32 tokens straddles a boundary at half of the offsets
    half = bench.expected_buckets(bench.uniform_pmf(0, 32), 64, prompts_per_rollout=2, rollouts=1000)
    assert half["p_more_than_one"] == pytest.approx(32 / 64) and 1 < half["expected"] < 2
    # worked by hand: lengths 0 or 1 (each 1/2), buckets of 2. At offset 0 both are in one bucket; at offset 1
    # they straddle a boundary, and a rollout of 2 prompts is in the lower bucket only if both are short (1/4):
    # over 3 rollouts that bucket is hit with 1 - (3/4)^3, the upper one with 1 - (1/4)^3
    worked = bench.expected_buckets(np.array([0.5, 0.5]), 2, prompts_per_rollout=2, rollouts=3)
    assert worked["expected"] == pytest.approx((1 + (1 - 0.75**3) + (1 - 0.25**3)) / 2)
    assert (worked["min"], worked["max"], worked["p_more_than_one"]) == (1, 2, 0.5)
    # a lower bucket is reached only when every prompt of a rollout is short: fewer hits with more prompts,
    # and with few rollouts
    many = bench.expected_buckets(bench.uniform_pmf(0, 32), 64, prompts_per_rollout=64, rollouts=3)
    assert many["expected"] < half["expected"]


def test_avqa_estimate():
    bench = load_bench_script("gpu_step")
    est = bench.avqa_bucket_estimate()
    assert est["estimate"] is True and est["audio_tokens"] == [250, 250]
    typical, wide = est["typical"], est["wide"]
    lo, hi = typical["varying_tokens"]
    # question 5-16 words x 1.3 + '?' and four choices of 1-5 words x 1.3
    assert (lo, hi) == (round(5 * 1.3) + 1 + 4 * 1, round(16 * 1.3) + 1 + 4 * round(5 * 1.3))
    assert typical["min"] == 1 and typical["max"] == 2 and 1 < typical["expected"] < 2
    assert wide["expected"] > typical["expected"] and wide["max"] >= 2
    # shorter clips spread the lengths further
    assert bench.avqa_bucket_estimate(clip_seconds=(5.0, 10.0))["typical"]["expected"] > typical["expected"]


def test_out_of_memory_retries_with_half_the_micro_batch(bench, no_liger, tmp_path, monkeypatch):
    """A training loop that runs out of GPU memory is rebuilt and rerun with micro-batches half as large."""
    real = bench.ModelRun.train_loop
    calls = []

    def train_loop(self):
        calls.append(self.args.micro)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self)

    monkeypatch.setattr(bench.ModelRun, "train_loop", train_loop)
    out = tmp_path / "r.json"
    bench.main([*TOY_ARGS, "--model", "qwen2_audio_7b", "--out", str(out), "--budget-s", "1"], floors=(1e11, 1e12))
    model = json.loads(out.read_text())["models"]["qwen2_audio_7b"]
    assert calls == [2, 1] and model["out_of_memory_at_micro"] == [2]
    assert model["micro"] == model["shape"]["micro"] == 1
    assert model["trainers_alive_before_build"] == 0  # the failed attempt's model was freed first
    check_required_figures(model, rows=4, new_tokens=4)


@pytest.mark.slow  # ~40 s on a loaded 2-core CPU
def test_toy_run_of_the_qwen3_omni_thinker(bench, fake_liger, tmp_path):
    """--model qwen3_omni_30b_a3b (the mixture of experts, shrunk): every required figure, the fast path exact, MFU
    over the active parameters (the routed share of the experts), Liger said to have no mapping."""
    out = tmp_path / "result.json"
    bench.main([*TOY_ARGS, "--model", "qwen3_omni_30b_a3b", "--out", str(out), "--budget-s", "1e9"],
               floors=(1e11, 1e12))
    on_disk = json.loads(out.read_text())
    assert on_disk["complete"] is True and set(on_disk["models"]) == {"qwen3_omni_30b_a3b"}
    model = on_disk["models"]["qwen3_omni_30b_a3b"]
    check_required_figures(model, rows=4, new_tokens=4)
    assert model["exactness"]["same_tokens"] is True
    assert model["update"]["liger_on"] == "no Liger mapping for Qwen3OmniMoeThinkerForConditionalGeneration"
    assert 0 < model["params_lm_active"] < model["params_lm"]
    update = model["update"]
    assert update["mfu"] == pytest.approx(4 * model["params_lm_active"] * update["tokens"] / (update["s"] * 1e12))
    assert model["encoder"]["clips_encoded"] * 2 == model["encoder"]["clips_requested"]


def test_active_parameters_count_the_routed_share_of_the_experts(bench):
    from audiothink.toy.qwen3_omni import build_qwen3_omni_processor, build_qwen3_omni_thinker

    model = build_qwen3_omni_thinker(build_qwen3_omni_processor())  # 4 experts, 2 routed
    lm = {n: p.numel() for n, p in model.named_parameters() if "language_model" in n or "lm_head" in n}
    experts = sum(v for n, v in lm.items() if ".mlp.experts." in n)
    assert experts > 0
    assert bench.active_lm_parameters(model) == sum(lm.values()) - experts // 2
    dense, _, _ = bench.build_qwen2_audio()
    assert bench.active_lm_parameters(dense) == sum(p.numel() for n, p in dense.named_parameters()
                                                    if "language_model" in n or "lm_head" in n)
