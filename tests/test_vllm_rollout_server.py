"""vLLM server mode for audio on CPU: TRL's real `VLLMClient` against a fake vLLM server on 127.0.0.1.

The fake is a real HTTP server (`http.server.ThreadingHTTPServer`) with the endpoints TRL 1.16's client
and `VLLMGeneration` use in server mode, answering in vLLM's formats (vLLM source, github.com/vllm-project/vllm):
- `/v1/chat/completions/render` (vllm/entrypoints/serve/render/api_router.py, serving.py): a
  `GenerateRequest` JSON whose `features` are `MultiModalFeatures` (vllm/entrypoints/serve/disagg/protocol.py):
  `mm_hashes`, `mm_placeholders` ({modality: [{offset, length}, ...]}, here "audio"), `kwargs_data`, pointing
  into the throwaway prompt the server rendered. It decodes the `input_audio` WAV parts as vLLM's audio
  loader does (vllm/multimodal/media/audio.py: soundfile, float32) and counts each clip's placeholders by
  vLLM's Qwen2-Audio rule (feature extractor -> mel frames -> `(L-1)//2+1` -> `(L-2)//2+1`).
- `/inference/v1/generate` (vllm/entrypoints/serve/disagg/serving.py): checks that the token ids hold, at
  every placeholder, a run of audio tokens as long as its clip's encoding, and answers `n` choices with
  token ids and logprobs as TRL's `parse_logprobs` reads them ("token_id:<id>" tokens).
- `/health`, `/v1/models`, `/server_info`, `/get_world_size`, the weight-update and prefix-cache endpoints.
Only the NCCL parts, which need CUDA, are stubbed: `VLLMClient.init_communicator` and the tensor broadcast
inside `update_named_params` (the names still reach the server through its real `/update_weights` call).
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import io
import json
import os
import re
import subprocess
import sys
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from accelerate import Accelerator
from safetensors import safe_open
from trl.generation import vllm_client as trl_client
from trl.generation import vllm_generation as trl_generation
from trl.generation.vllm_client import VLLMClient
from trl.generation.vllm_generation import VLLMGeneration

import audiothink.vllm_rollout as vr
from audiothink.audio import SAMPLE_RATE, load_audio
from audiothink.toy import TOY_MODEL_DIR
from audiothink.trainer import AudioGRPOTrainer
from audiothink.vllm_rollout import (
    AudioVLLMGeneration,
    audio_features,
    audio_runs,
    audio_token_ids,
    checkpoint_name,
    place_audio_features,
)
from audiothink.rewards import Accuracy, Format
from tests.helpers import (chat_prompt_ids, load_toy, mixed_clip_dataset, random_waves,
                           toy_grpo_args)
from tests.test_trainer import spy_audio_forwards

MODEL = "toy-qwen2-audio"


REPO = Path(__file__).resolve().parent.parent


def _hash(wave: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(wave, dtype=np.float32).tobytes()).hexdigest()


class FakeVLLMServer:
    """The part of `vllm serve --enable-scale-out` (dev mode) that TRL's server mode talks to.

    `style`: how the model's prompt update lays out a clip's placeholder range in the rendered prompt
    ("plain": `<|AUDIO|>` x N, the range is the run; "markers": `<|audio_bos|> <|AUDIO|> x N <|audio_eos|>`
    with an `is_embed` mask, as some vLLM versions of Qwen2-Audio; "off_by_one": one placeholder too many;
    "no_render": the render endpoint is missing, as without `--enable-scale-out`).
    """

    def __init__(self, processor, style: str = "plain"):
        self.processor, self.style = processor, style
        self.audio_id, self.bos_id, self.eos_id = audio_token_ids(processor)
        tok = processor.tokenizer
        self.completion = tok("<answer>high</answer>")["input_ids"] + [tok.eos_token_id]
        self.lock = threading.Lock()
        self.renders: list[dict] = []  # per render request: heard clips, rendered ids, features
        self.generates: list[dict] = []  # per generate request: its JSON body
        self.clips: dict[str, np.ndarray] = {}  # mm hash -> the wave the server decoded
        self.weight_updates: list[dict] = []
        self.events: list[str] = []
        self.gets: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                path = self.path.split("?")[0]
                with server.lock:
                    server.gets.append(path)
                answers = {
                    "/health": {},
                    "/v1/models": {"object": "list", "data": [{"id": MODEL, "object": "model"}]},
                    "/server_info": {"vllm_config": {"model_config": {"logprobs_mode": "processed_logprobs"},
                                                     "weight_transfer_config": {"backend": "nccl"}}},
                    "/get_world_size": {"world_size": 1},
                }
                if path in answers:
                    self._reply(200, answers[path])
                else:
                    self._reply(404, {"detail": "Not Found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                path = self.path.split("?")[0]
                try:
                    if path == "/v1/chat/completions/render" and server.style != "no_render":
                        self._reply(200, server.render(body))
                    elif path == "/inference/v1/generate":
                        self._reply(200, server.generate(body))
                    elif path == "/update_weights":
                        with server.lock:
                            server.weight_updates.append(body["update_info"])
                        self._reply(200, {})
                    elif path in ("/start_weight_update", "/finish_weight_update", "/reset_prefix_cache"):
                        with server.lock:
                            server.events.append(path)
                        self._reply(200, {"success": True} if path == "/reset_prefix_cache" else {})
                    else:
                        self._reply(404, {"detail": "Not Found"})
                except AssertionError as exc:  # 400: TRL's client does not retry it, and shows the text
                    self._reply(400, {"error": {"message": f"fake vLLM refused the request: {exc}", "code": 400}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # -- the two multimodal endpoints --

    def count(self, wave: np.ndarray, sr: int) -> int:
        fe = self.processor.feature_extractor
        mel = int(fe(wave, sampling_rate=sr, return_attention_mask=True, padding="max_length")["attention_mask"].sum())
        return ((mel - 1) // 2 + 1 - 2) // 2 + 1 + (1 if self.style == "off_by_one" else 0)

    def render(self, body: dict) -> dict:
        assert body["model"] == MODEL, body["model"]
        (message,) = body["messages"]
        heard, rates, ids, placeholders, hashes = [], [], [7, 8, 9], [], []
        for part in message["content"]:
            assert part["type"] == "input_audio", part["type"]
            assert part["input_audio"]["format"] == "wav"
            # vLLM's loader: soundfile, read as float32 (vllm/multimodal/media/audio.py)
            wave, sr = sf.read(io.BytesIO(base64.b64decode(part["input_audio"]["data"])), dtype="float32")
            assert wave.ndim == 1 and len(wave) > 0
            assert sr == self.processor.feature_extractor.sampling_rate, f"{sr} Hz"
            n = self.count(wave, sr)
            ids += [11, 12]  # "Audio i: "
            if self.style == "markers":
                placeholders.append({"offset": len(ids), "length": n + 2, "is_embed": [False] + [True] * n + [False]})
                ids += [self.bos_id] + [self.audio_id] * n + [self.eos_id]
            else:
                ids += [self.bos_id]
                placeholders.append({"offset": len(ids), "length": n})
                ids += [self.audio_id] * n + [self.eos_id]
            heard.append(wave)
            rates.append(sr)
            hashes.append(_hash(wave))
        ids += [13, 14]
        with self.lock:
            self.clips.update(zip(hashes, heard, strict=True))
            features = {
                "mm_hashes": {"audio": hashes},
                "mm_placeholders": {"audio": placeholders},
                "kwargs_data": {"audio": [base64.b64encode(h.encode()).decode() for h in hashes]},
            }
            self.renders.append({"heard": heard, "rates": rates, "token_ids": ids, "features": features})
        return {"request_id": f"chatcmpl-{len(self.renders)}", "token_ids": ids, "features": features,
                "sampling_params": {"max_tokens": body.get("max_tokens")}, "model": MODEL, "stream": False}

    def generate(self, body: dict) -> dict:
        ids, features, params = body["token_ids"], body["features"], body["sampling_params"]
        assert params.get("output_kind") == 2, "TRL asks for FINAL_ONLY outputs"
        if features is not None:
            hashes = features["mm_hashes"]["audio"]
            spans = features["mm_placeholders"]["audio"]
            assert len(spans) == len(hashes) == len(features["kwargs_data"]["audio"])
            embedded = 0
            for h, span in zip(hashes, spans, strict=True):
                window = ids[span["offset"] : span["offset"] + span["length"]]
                mask = span.get("is_embed") or [True] * span["length"]
                assert len(window) == span["length"] == len(mask), f"range {span} past the prompt end"
                assert all((t == self.audio_id) == m for t, m in zip(window, mask, strict=True)), \
                    f"range {span} is not the audio run of the prompt: {window[:4]}..."
                assert sum(mask) == self.count(self.clips[h], SAMPLE_RATE), "run length != the clip's encoding"
                embedded += sum(mask)
            assert ids.count(self.audio_id) == embedded, "audio tokens outside the placeholder ranges"
        else:
            assert self.audio_id not in ids, "audio tokens without features: vLLM would not hear the audio"
        with self.lock:
            self.generates.append(body)
        # vLLM's ServingTokens._create_tokens_logprobs: "token_id:<id>" tokens; with logprobs=0 the top list
        # holds the sampled token alone
        lps = {"content": [{"token": f"token_id:{t}", "logprob": -0.7, "bytes": None,
                            "top_logprobs": [{"token": f"token_id:{t}", "logprob": -0.7, "bytes": None}]}
                           for t in self.completion]}
        choices = [{"index": i, "token_ids": list(self.completion), "logprobs": lps, "finish_reason": "stop"}
                   for i in range(params["n"])]
        return {"request_id": body["request_id"], "choices": choices}

    @contextmanager
    def running(self):
        self.thread.start()
        try:
            yield self
        finally:
            self.httpd.shutdown()
            self.httpd.server_close()


class FakeNCCL:
    """Stands in for vLLM's NCCL weight-transfer engine on the trainer side (CUDA only): records what would
    have been broadcast."""

    sent: list[tuple[str, torch.Tensor]] = []

    @classmethod
    def trainer_send_weights(cls, iterator, trainer_args):
        cls.sent.extend((name, tensor.detach().clone()) for name, tensor in iterator)


def _pretend_vllm_installed(set_attr, inits: list) -> None:
    """vLLM 'installed' as far as TRL's checks go; the NCCL communicator and the tensor broadcast stubbed.
    `set_attr(obj, name, value)`: monkeypatch's setattr in tests, the builtin in the two-process probe."""

    def init_communicator(self, device=0):
        inits.append(str(device))
        self.communicator = SimpleNamespace(group=SimpleNamespace(store=None, socket=None))

    set_attr(vr, "vllm_installed", lambda: True)
    set_attr(trl_generation, "is_vllm_available", lambda *a, **k: True)
    set_attr(trl_client, "is_vllm_available", lambda *a, **k: True)
    set_attr(VLLMClient, "init_communicator", init_communicator)
    set_attr(trl_client, "_HAS_STATEFUL_TRAINER_ENGINE", False)
    set_attr(trl_client, "NCCLWeightTransferEngine", FakeNCCL)
    set_attr(trl_client, "NCCLTrainerSendWeightsArgs", lambda **kw: SimpleNamespace(**kw))


@pytest.fixture
def server_mode(monkeypatch):
    """`_pretend_vllm_installed`, undone after the test; loopback not proxied."""
    pytest.importorskip("requests", reason="TRL's VLLMClient needs requests (the dev extra): pip install -e '.[dev]'")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    inits: list[str] = []
    _pretend_vllm_installed(lambda obj, name, value: monkeypatch.setattr(obj, name, value, raising=False), inits)
    FakeNCCL.sent = []
    return SimpleNamespace(inits=inits, nccl=FakeNCCL)


def _engine(server: FakeVLLMServer, model, processor, **kw) -> AudioVLLMGeneration:
    return AudioVLLMGeneration(audio_processor=processor, waves=lambda: None, model=model,
                               accelerator=Accelerator(cpu=True), processing_class=processor.tokenizer,
                               mode="server", server_host="127.0.0.1", server_port=server.port, server_timeout=5,
                               max_completion_length=8, generation_kwargs={"suppress_tokens": [3, 4]}, **kw)


@pytest.fixture(scope="module")
def toy(toy_model_dir):
    return load_toy(toy_model_dir)


# -- TRL's server API the engine relies on (pinned) ----------------------------------------------------


def test_trl_server_api_unchanged():
    params = lambda f: list(inspect.signature(f).parameters)  # noqa: E731
    assert params(VLLMClient.generate)[:3] == ["self", "prompts", "features"]
    features = inspect.getsource(VLLMClient.image_features)
    assert "/v1/chat/completions/render" in features and 'response.json()["features"]' in features
    assert "/inference/v1/generate" in inspect.getsource(VLLMClient._generate_from_features)
    sync = inspect.getsource(VLLMGeneration.sync_weights)
    # server mode names its tensors through _iter_named_params, i.e. through _fix_param_name_to_vllm
    assert "self._iter_named_params()" in sync and "update_named_params(self._weight_metadata" in sync
    init = inspect.getsource(VLLMGeneration._init_vllm)
    assert "VLLMClient(" in init and "init_communicator(" in init
    assert '["mm_placeholders"]["image"]' in inspect.getsource(VLLMGeneration._place_features)


# -- rendering and placing ----------------------------------------------------------------------------


def test_render_hears_the_exact_samples(server_mode, toy):
    _, processor = toy
    a, b = random_waves(0.7, 1.3)
    hot = np.array([1.5, -2.0, 0.123456789, 1e-9] * 400, dtype=np.float32)  # past +-1: float WAV keeps it
    with FakeVLLMServer(processor).running() as server:
        client = VLLMClient(base_url=server.base_url, connection_timeout=5)
        assert client.model == MODEL
        rendered = audio_features(client, [[a], [a, b], [], [hot]], SAMPLE_RATE)
    assert rendered[2] is None  # a prompt without clips: no request, like TRL's image_features
    assert len(server.renders) == 3
    heard = {tuple(_hash(w) for w in r["heard"]): r for r in server.renders}  # requests run concurrently
    for clips in ([a], [a, b], [hot]):
        got = heard[tuple(_hash(w) for w in clips)]
        assert got["rates"] == [SAMPLE_RATE] * len(clips)
        for wave, clip in zip(got["heard"], clips, strict=True):
            assert wave.dtype == np.float32 and np.array_equal(wave, clip)  # bit for bit, not PCM-rounded
    for r, clips in zip(rendered, [[a], [a, b], [], [hot]], strict=True):
        if r is not None:
            assert len(r["features"]["mm_placeholders"]["audio"]) == len(clips)
            assert set(r["features"]) == {"mm_hashes", "mm_placeholders", "kwargs_data"}


def _rendered(audio_id, n_runs: list[int], style="plain"):
    ids, spans = [1, 2], []
    for n in n_runs:
        if style == "markers":
            spans.append({"offset": len(ids) + 1, "length": n + 2, "is_embed": [False] + [True] * n + [False]})
            ids += [5, 50] + [audio_id] * n + [51]
        else:
            ids += [5, 50]
            spans.append({"offset": len(ids), "length": n})
            ids += [audio_id] * n + [51]
    h = [f"h{i}" for i in range(len(n_runs))]
    return {"token_ids": ids, "features": {"mm_hashes": {"audio": h}, "mm_placeholders": {"audio": spans},
                                           "kwargs_data": {"audio": ["k"] * len(n_runs)}}}


@pytest.mark.parametrize("style", ["plain", "markers"])
def test_place_audio_features_on_the_training_runs(style):
    A = 99
    training = [9, 9, 9, 50, A, A, A, 51, 8, 50, A, A, 51, 7]
    placed = place_audio_features(_rendered(A, [3, 2], style), training, A)
    spans = placed["mm_placeholders"]["audio"]
    if style == "plain":
        assert spans == [{"offset": 4, "length": 3}, {"offset": 10, "length": 2}]
    else:  # the range keeps its markers and mask, moved with the run
        assert spans == [{"offset": 3, "length": 5, "is_embed": [False, True, True, True, False]},
                         {"offset": 9, "length": 4, "is_embed": [False, True, True, False]}]
    assert [training[s["offset"] : s["offset"] + s["length"]].count(A) for s in spans] == [3, 2]
    assert placed["mm_hashes"] == {"audio": ["h0", "h1"]} and placed["kwargs_data"] == {"audio": ["k", "k"]}
    assert audio_runs(training, A) == [(4, 3), (10, 2)]


def test_place_audio_features_refuses_a_prompt_that_does_not_match():
    A = 99
    one_run = [9, 50, A, A, A, 51, 7]
    with pytest.raises(ValueError, match=r"Found 1 runs of audio tokens in the prompt but 2 clips were processed"):
        place_audio_features(_rendered(A, [3, 2]), one_run, A)
    with pytest.raises(ValueError, match=r"Found 1 runs of audio tokens in the prompt but no clip"):
        place_audio_features(None, one_run, A)
    with pytest.raises(ValueError, match=r"run of 3 audio tokens, the vLLM server encodes the clip to 4"):
        place_audio_features(_rendered(A, [4]), one_run, A)
    with pytest.raises(ValueError, match="does not have around its run"):
        place_audio_features(_rendered(A, [3], "markers"), [9, 77, A, A, A, 51], A)
    assert place_audio_features(None, [1, 2, 3], A) is None


# -- the engine ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["plain", "markers"])
def test_generate_through_the_server(server_mode, toy, style):
    model, processor = toy
    a, b = random_waves(0.7, 1.9)
    clip_sets = [[a], [a, b]]
    training = chat_prompt_ids(processor, clip_sets)
    G = 3
    prompts = [ids for ids in training for _ in range(G)]
    waves = [clips for clips in clip_sets for _ in range(G)]
    with FakeVLLMServer(processor, style).running() as server:
        engine = _engine(server, model, processor)
        assert server_mode.inits and engine.vllm_client.base_url == server.base_url
        prompt_ids, completions, logprobs, token_ids = engine.generate(prompts, None, G, waves=waves)
    # one render and one generate per distinct prompt, n = G completions each
    assert len(server.renders) == len(server.generates) == 2
    sent = sorted(server.generates, key=lambda g: len(g["token_ids"]))
    audio_id = audio_token_ids(processor)[0]
    for body, ids in zip(sent, sorted(training, key=len), strict=True):
        assert body["token_ids"] == ids  # the expanded training ids, not a rendered prompt
        spans = body["features"]["mm_placeholders"]["audio"]
        runs = audio_runs(ids, audio_id)
        lead = 1 if style == "markers" else 0
        assert [(s["offset"] + lead, s["length"] - 2 * lead) for s in spans] == runs
        params = body["sampling_params"]
        assert params["n"] == G and params["max_tokens"] == 8
        assert params["logit_bias"] == {"3": -100.0, "4": -100.0} and "suppress_tokens" not in params
    assert prompt_ids == prompts and completions == [server.completion] * 6
    assert logprobs == [[[-0.7]] * len(server.completion)] * 6
    assert token_ids == [[[t] for t in server.completion]] * 6


def test_generate_refuses_mismatched_prompts(server_mode, toy):
    model, processor = toy
    a, b = random_waves(0.5, 1.2)
    one_clip_prompt = chat_prompt_ids(processor, [[a]])
    with FakeVLLMServer(processor).running() as server:
        engine = _engine(server, model, processor)
        with pytest.raises(ValueError, match="Found 1 runs of audio tokens in the prompt but 2 clips were processed"):
            engine.generate(one_clip_prompt, None, 1, waves=[[a, b]])
        assert server.generates == []  # refused before asking for completions
    with FakeVLLMServer(processor, "off_by_one").running() as server:
        engine = _engine(server, model, processor)
        with pytest.raises(ValueError, match="the vLLM server encodes the clip to"):
            engine.generate(one_clip_prompt, None, 1, waves=[[a]])
    with FakeVLLMServer(processor, "no_render").running() as server:
        engine = _engine(server, model, processor)
        with pytest.raises(RuntimeError, match="--enable-scale-out"):
            engine.generate(one_clip_prompt, None, 1, waves=[[a]])


def test_sync_weights_through_the_server_under_checkpoint_names(server_mode, toy, toy_model_dir):
    model, processor = toy
    with FakeVLLMServer(processor).running() as server:
        engine = _engine(server, model, processor)
        engine.sync_weights()
    (update,) = server.weight_updates
    with safe_open(str(toy_model_dir / "model.safetensors"), "pt") as f:
        assert set(update["names"]) == set(f.keys())
    assert len(update["names"]) == len(set(update["names"])) == sum(1 for _ in model.parameters())
    assert not [n for n in update["names"] if n.startswith("model.")]
    # the tensors broadcast are announced in the same order, under the same names, with their shapes
    sent = server_mode.nccl.sent
    assert [n for n, _ in sent] == update["names"]
    assert [list(t.shape) for _, t in sent] == update["shapes"]
    params = {checkpoint_name(n, "qwen2_audio"): p for n, p in model.named_parameters()}
    assert all(torch.equal(t, params[n]) for n, t in sent)
    assert server.events == ["/start_weight_update", "/finish_weight_update", "/reset_prefix_cache"]


# -- the trainer in server mode -----------------------------------------------------------------------


def _server_trainer(toy_model_dir, toy_files, tmp_path, server, **kw):
    model, processor = load_toy(toy_model_dir)
    args = toy_grpo_args(tmp_path, use_vllm=True, vllm_mode="server", vllm_server_host="127.0.0.1",
                         vllm_server_port=server.port, vllm_server_timeout=5, **kw)
    trainer = AudioGRPOTrainer(model=model, processor=processor, reward_funcs=[Format(), Accuracy()], args=args,
                               train_dataset=mixed_clip_dataset(toy_files), max_audio_seconds=2.0)
    assert isinstance(trainer.vllm_generation, AudioVLLMGeneration) and trainer.vllm_generation.mode == "server"
    return trainer


def _loaded_clips(rows) -> list[list[np.ndarray]]:
    """Each row's clips as the trainer loads them (max_audio_seconds=2)."""
    paths = [[row["audio"]] if isinstance(row["audio"], str) else row["audio"] for row in rows]
    return [[load_audio(p, max_seconds=2.0)[0] for p in row] for row in paths]


def test_trainer_step_through_a_vllm_server(server_mode, toy_model_dir, toy_files, tmp_path):
    _, processor = load_toy(toy_model_dir)
    with FakeVLLMServer(processor).running() as server:
        trainer = _server_trainer(toy_model_dir, toy_files, tmp_path, server, beta=0.04)
        with spy_audio_forwards(trainer.model, trainer.ref_model) as calls:
            trainer.train()
    args = trainer.args
    G = args.num_generations
    assert server_mode.inits  # the client joined the (stubbed) NCCL group

    # the server heard the dataset's clips, exactly as the trainer loaded them, one render per prompt
    assert len(server.renders) == len(server.generates) == args.per_device_train_batch_size // G
    loaded = _loaded_clips(trainer.train_dataset)
    for render in server.renders:
        assert render["rates"] == [SAMPLE_RATE] * len(render["heard"])
        assert any(len(c) == len(render["heard"]) and all(np.array_equal(h, w) for h, w in zip(render["heard"], c))
                   for c in loaded), "a clip the server heard is not a clip of the data set"

    # each prompt was sent as the expanded training ids, with its own clips' features on its audio runs
    audio_id = audio_token_ids(processor)[0]
    by_hash = {tuple(r["features"]["mm_hashes"]["audio"]): r for r in server.renders}
    for body in server.generates:
        ids, features = body["token_ids"], body["features"]
        render = by_hash[tuple(features["mm_hashes"]["audio"])]
        assert features["kwargs_data"] == render["features"]["kwargs_data"]
        runs = audio_runs(ids, audio_id)
        assert [(s["offset"], s["length"]) for s in features["mm_placeholders"]["audio"]] == runs
        assert len(runs) == len(render["heard"]) >= 1
        assert body["sampling_params"]["n"] == G
        assert body["sampling_params"]["logit_bias"] == {str(t): -100.0 for t in trainer.banned_token_ids}

    # training: every log-prob pass (old, reference, policy) had the audio features, on the ids sent
    assert calls and all(c["features"] and c["mask"] for c in calls)
    per_prompt = [body["token_ids"].count(audio_id) for body in server.generates for _ in range(G)]
    whole_batch = [c for c in calls if c["rows"] == len(per_prompt)]
    assert whole_batch and all(c["audio_tokens"] == sum(per_prompt) for c in whole_batch)

    # weights went to the server once, before generating, under checkpoint names
    (update,) = server.weight_updates
    with safe_open(str(toy_model_dir / "model.safetensors"), "pt") as f:
        assert set(update["names"]) == set(f.keys())
    assert not [n for n in update["names"] if n.startswith("model.")]
    assert [n for n, _ in server_mode.nccl.sent] == update["names"]
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and np.isfinite(logs[0]["loss"])


def test_trainer_batch_is_what_the_server_sampled_from(server_mode, toy_model_dir, toy_files, tmp_path):
    """Token for token: the training batch's prompts are the ids the server generated from."""
    _, processor = load_toy(toy_model_dir)
    with FakeVLLMServer(processor).running() as server:
        trainer = _server_trainer(toy_model_dir, toy_files, tmp_path, server)
        batch = [trainer.train_dataset[i] for i in range(2) for _ in range(4)]
        trainer.model.train()
        out = trainer._generate_and_score_completions(batch)
    prompts = [ids[mask.bool()].tolist() for ids, mask in zip(out["prompt_ids"], out["prompt_mask"], strict=True)]
    groups = [prompts[i : i + 4] for i in range(0, 8, 4)]
    assert all(g == [g[0]] * 4 for g in groups)
    # requests run concurrently: match each prompt to the request that carried its clips
    clips = _loaded_clips(batch[::4])
    by_hash = {tuple(b["features"]["mm_hashes"]["audio"]): b for b in server.generates}
    for group, row_clips in zip(groups, clips, strict=True):
        body = by_hash[tuple(_hash(w) for w in row_clips)]  # the server heard exactly this row's clips
        assert body["token_ids"] == group[0]
    assert any(k.startswith("audio__") for k in out)
    assert out["completion_ids"][0][: len(server.completion)].tolist() == server.completion
    assert out["sampling_per_token_logps"].shape == out["completion_ids"].shape


def test_no_vllm_no_server_mode(monkeypatch, tmp_path):
    monkeypatch.setattr(vr, "vllm_installed", lambda: False)
    with pytest.raises(ImportError, match=re.escape("server mode too")):
        vr.check_vllm_config(toy_grpo_args(tmp_path, use_vllm=True, vllm_mode="server"))


# -- several training processes: only the main one talks to the server --------------------------------


def _two_process_probe(port: int, out_dir: str) -> None:
    """Run by `test_two_processes_share_one_server` under torchrun (2 CPU processes, gloo). Each rank has
    its own prompt (rank 0: one clip, rank 1: two), G = 2 copies; then rank 1 alone sends a prompt whose
    audio runs do not match its clips, which the main process refuses: every rank must fail, none hang."""
    _pretend_vllm_installed(setattr, [])
    model, processor = load_toy(TOY_MODEL_DIR)
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    a, b = random_waves(0.6, 1.4)
    clips = [[a], [a, b]][rank]
    ids = chat_prompt_ids(processor, [clips])[0]
    engine = AudioVLLMGeneration(audio_processor=processor, waves=lambda: None, model=model, accelerator=accelerator,
                                 processing_class=processor.tokenizer, mode="server", server_host="127.0.0.1",
                                 server_port=port, server_timeout=10, max_completion_length=8)
    result = {"rank": rank, "world": accelerator.num_processes, "has_client": hasattr(engine, "vllm_client"),
              "sent": ids}
    prompt_ids, completions, logprobs, _ = engine.generate([ids, ids], None, 2, waves=[clips, clips])
    result.update(prompt_ids=prompt_ids, completions=completions, logprobs=logprobs)
    wrong = [[a], [a]][rank]  # rank 1's prompt has two audio runs, it now says one clip
    try:
        engine.generate([ids, ids], None, 2, waves=[wrong, wrong])
        result["error"] = None
    except Exception as exc:  # noqa: BLE001 - recorded for the test
        result["error"] = f"{type(exc).__name__}: {exc}"
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    accelerator.wait_for_everyone()


def test_two_processes_share_one_server(toy_model_dir, tmp_path):
    pytest.importorskip("requests", reason="TRL's VLLMClient needs requests (the dev extra): pip install -e '.[dev]'")
    _, processor = load_toy(toy_model_dir)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    with FakeVLLMServer(processor).running() as server:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "tests.test_vllm_rollout_server", str(server.port), str(tmp_path)]
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}"
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["has_client"] and not r1["has_client"]  # one client, on the main process
    assert server.gets.count("/v1/models") == 1
    # the good round: both ranks' prompts rendered and generated once each (n = 2), each rank got its own back
    assert len(server.generates) == 2
    assert sorted(g["token_ids"] for g in server.generates) == sorted([r0["sent"], r1["sent"]])
    assert all(g["sampling_params"]["n"] == 2 for g in server.generates)
    for r in (r0, r1):
        assert r["prompt_ids"] == [r["sent"], r["sent"]]
        assert r["completions"] == [server.completion] * 2
        assert r["logprobs"] == [[[-0.7]] * len(server.completion)] * 2
    # the bad round: refused on the main process before any generate request, and every rank raised
    assert "Found 2 runs of audio tokens in the prompt but 1 clips were processed" in r0["error"]
    assert r1["error"].startswith("RuntimeError: vLLM server rollout failed on the main process")
    assert "Found 2 runs of audio tokens" in r1["error"]


if __name__ == "__main__":
    _two_process_probe(int(sys.argv[1]), sys.argv[2])
