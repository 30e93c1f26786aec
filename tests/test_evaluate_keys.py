"""What an evaluation's stored predictions are keyed on: the contents that decide them, not paths.

New weights at the same model.path are another model (refused, before the model loads); an item whose
question, choices or audio was edited in place is predicted again, and every item is scored against the
metadata as it is now; a torn record anywhere in predictions.jsonl is dropped, named and predicted again;
failed items are retried on a rerun; every setting in the header is compared (the prompt above all)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from transformers import Qwen2AudioForConditionalGeneration

import audiothink.evaluate as evaluate_module
from audiothink.benchmarks.store import PredictionStore, StoreMismatch
from audiothink.data import DataError
from audiothink.plumbing.errors import ConfigError
from tests.helpers import eval_cfg, make_mmau_fixture, run_eval

N = 8


@pytest.fixture(autouse=True)
def hash_cache(tmp_path, monkeypatch):
    """Each test's own file-hash cache (the toy benchmark is given by benchmark.root, not this variable)."""
    monkeypatch.setenv("AUDIOTHINK_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def toy8(tmp_path_factory):
    from audiothink.toy.data import generate_toy

    return generate_toy(tmp_path_factory.mktemp("toy8"), n_train=4, n_eval=N, seed=0)


def _toy(files) -> list[str]:
    return ["benchmark=toy", f"benchmark.root={files['eval'].parent}", "benchmark.generate_toy=false",
            "eval.batch_size=4", "eval.charts=false", "eval.max_new_tokens=16"]


class Rows:
    """Counts the rows generate() is asked for; ``fail`` makes every call raise."""

    def __init__(self, monkeypatch, fail: bool = False):
        self.rows = 0
        original = Qwen2AudioForConditionalGeneration.generate

        def generate(model, *args, **kwargs):
            if fail:
                raise RuntimeError("simulated failure")
            self.rows += kwargs["input_ids"].shape[0]
            return original(model, *args, **kwargs)

        monkeypatch.setattr(Qwen2AudioForConditionalGeneration, "generate", generate)


def _no_model_load(monkeypatch):
    def refuse(cfg):
        raise AssertionError("the model was loaded before the predictions were checked")

    monkeypatch.setattr(evaluate_module, "load_model", refuse)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_new_weights_at_the_same_path_are_another_model(tmp_path, toy8, toy_model_dir, monkeypatch):
    """The example: retrained weights written over model.path resumed 64 old predictions. Here the new
    weights even keep the old file's size and mtime (as cp -p would): the content decides."""
    import os

    import torch
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(toy_model_dir, model)
    out = tmp_path / "out"
    first = run_eval(out, *_toy(toy8), f"model.path={model}")
    before = (out / "predictions.jsonl").read_text()

    weights = model / "model.safetensors"
    st = weights.stat()
    tensors = load_file(weights)
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1000)
    tensors[name] = tensors[name] + 0.5 * torch.randn_like(tensors[name])  # same shapes: same file size
    save_file(tensors, weights, metadata={"format": "pt"})
    assert weights.stat().st_size == st.st_size
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))

    rows = Rows(monkeypatch)
    with pytest.raises(StoreMismatch, match=r"the files at model.path \(weights, config, tokenizer\): 'sha256:"):
        run_eval(out, *_toy(toy8), f"model.path={model}")
    assert rows.rows == 0 and (out / "predictions.jsonl").read_text() == before  # nothing reused, nothing written
    _no_model_load(monkeypatch)  # and refused before the model loads
    with pytest.raises(StoreMismatch):
        run_eval(out, *_toy(toy8), f"model.path={model}")
    monkeypatch.undo()
    rows = Rows(monkeypatch)
    again = run_eval(out, *_toy(toy8), f"model.path={model}", "eval.restart=true")
    assert rows.rows == N and again["run"]["resumed"] == 0
    assert first["model"]["model_files"].startswith("sha256:")  # results.json says which files were evaluated
    assert again["model"]["model_files"] != first["model"]["model_files"]


def test_an_adapter_changed_in_place_is_another_model(tmp_path, toy8, toy_model_dir, monkeypatch):
    from tests.helpers import toy_lora_adapter

    adapter = toy_lora_adapter(toy_model_dir, tmp_path / "adapter", 0.0)
    out = tmp_path / "out"
    run_eval(out, *_toy(toy8), f"adapter={adapter}", "eval.kl=false", "eval.limit=2")
    toy_lora_adapter(toy_model_dir, adapter, 0.05)  # written over the same folder
    with pytest.raises(StoreMismatch, match="the adapter's files"):
        run_eval(out, *_toy(toy8), f"adapter={adapter}", "eval.kl=false", "eval.limit=2")


def test_metadata_and_audio_edited_in_place(tmp_path, monkeypatch, caplog):
    """The example: metadata edited in place was scored with the old predictions against the new answers.
    Changed question -> predicted again; changed audio bytes at the same path -> predicted again; changed
    answer -> the stored prediction is scored against the new answer. The result equals a fresh evaluation."""
    meta = make_mmau_fixture(tmp_path / "mmau")
    args = ["benchmark=mmau_test_mini", f"benchmark.meta={meta}", "eval.batch_size=1", "eval.max_new_tokens=8",
            "eval.charts=false"]
    out = tmp_path / "out"
    run_eval(out, *args)
    items = json.loads(meta.read_text())
    items[0]["question"] = items[0]["question"] + " Listen closely."
    items[1]["answer"] = next(c for c in items[1]["choices"] if c != items[1]["answer"])
    audio = tmp_path / "mmau" / items[2]["audio_id"]
    audio.write_bytes((tmp_path / "mmau" / items[5]["audio_id"]).read_bytes())  # other sound, same path
    meta.write_text(json.dumps(items, indent=4), encoding="utf-8")

    rows = Rows(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="audiothink.evaluate"):
        resumed = run_eval(out, *args)
    assert rows.rows == 2 and resumed["run"]["resumed"] == 10
    (line,) = [x for x in caplog.messages if "stored prediction(s)" in x]  # one line says what changed
    assert ("2 stored prediction(s) were made for other item contents (question, choices or audio changed since: "
            "id ") in line and items[0]["id"] in line and items[2]["id"] in line and items[1]["id"] not in line
    fresh = run_eval(tmp_path / "fresh", *args)
    assert resumed["summary"] == fresh["summary"] and resumed["lines"] == fresh["lines"]
    recs = {json.loads(x)["key"]: json.loads(x) for x in _lines(out / "predictions.jsonl")[1:]}
    fresh_recs = {json.loads(x)["key"]: json.loads(x) for x in _lines(tmp_path / "fresh" / "predictions.jsonl")[1:]}
    assert {k: r["output"] for k, r in recs.items()} == {k: r["output"] for k, r in fresh_recs.items()}


def test_a_torn_record_mid_file_is_dropped_named_and_predicted_again(tmp_path, toy8, monkeypatch, caplog):
    """A damaged line in the middle of predictions.jsonl (not only a torn last line) ended in a JSONDecodeError
    traceback naming neither file nor line."""
    out = tmp_path / "out"
    reference = run_eval(out, *_toy(toy8))
    path = out / "predictions.jsonl"
    lines = _lines(path)
    lines[3] = lines[3][: len(lines[3]) // 2]  # line 4: half a record, then the file goes on
    lines[5] = "\udcff garbage"  # line 6: bytes that are not UTF-8
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogateescape") + b"\n")

    rows = Rows(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="audiothink.evaluate"):
        r = run_eval(out, *_toy(toy8))
    assert f"{path}: lines 4, 6 are not complete records" in caplog.text
    assert rows.rows == 2 and r["run"]["resumed"] == N - 2
    assert r["summary"] == reference["summary"]
    assert all(json.loads(x) for x in _lines(path))  # rewritten clean: the next run reads it silently
    assert len(_lines(path)) == 1 + N


def test_store_names_a_torn_header(tmp_path):
    p = tmp_path / "predictions.jsonl"
    p.write_text('{"_header": {"mod\n{"key": "a"}\n')
    with pytest.raises(StoreMismatch, match=rf"{p}:1: not a predictions file"):
        PredictionStore(p, {"model": "m"})


def test_a_rerun_retries_failed_items(tmp_path, toy8, monkeypatch):
    """Mutant: reruns no longer retrying failed items (done() ignoring the error, retry_failed off)."""
    out = tmp_path / "out"
    Rows(monkeypatch, fail=True)
    failed = run_eval(out, *_toy(toy8), "eval.max_failures=100")
    assert failed["summary"]["overall"]["failures"] == N
    monkeypatch.undo()
    rows = Rows(monkeypatch)
    r = run_eval(out, *_toy(toy8), "eval.max_failures=100")
    assert rows.rows == N and r["summary"]["overall"]["failures"] == 0 and r["run"]["resumed"] == 0


@pytest.mark.parametrize("override, field", [
    ("prompt='{question} {choices} Answer inside <answer></answer>.'", "prompt"),
    ("eval.max_new_tokens=12", "max_new_tokens"),
    ("model.max_audio_seconds=0.5", "max_audio_seconds"),
    ("model.dtype=bfloat16", "dtype"),
    ("eval.do_sample=true", "do_sample"),
])
def test_every_setting_of_the_header_is_compared(tmp_path, toy8, monkeypatch, override, field):
    """Mutant: the prompt (or another setting) dropped from the predictions' fingerprint, so a rerun with
    another prompt mixes predictions. The rerun is refused, naming the setting, before the model loads."""
    out = tmp_path / "out"
    run_eval(out, *_toy(toy8), "eval.limit=2")
    before = [(out / name).read_text() for name in ("predictions.jsonl", "config.yaml")]
    _no_model_load(monkeypatch)
    with pytest.raises(StoreMismatch, match=rf"\({field}: |; {field}: "):
        run_eval(out, *_toy(toy8), "eval.limit=2", override)
    assert [(out / name).read_text() for name in ("predictions.jsonl", "config.yaml")] == before  # left as it was


def test_force_mode_and_listen_check_have_their_own_files(tmp_path, toy8, monkeypatch):
    """A forced mode's predictions are never the free choice's (force_mode in the header), the listening
    check's never the real audio's."""
    out = tmp_path / "out"
    run_eval(out, *_toy(toy8), "eval.limit=2", "eval.force_mode=think", "eval.listen_check=silence")
    for name, key, value in (("predictions_force_think.jsonl", "force_mode", "think"),
                             ("predictions_silence.jsonl", "audio", "silence"),
                             ("predictions.jsonl", "audio", "real")):
        header = json.loads(_lines(out / name)[0])["_header"]
        assert header[key] == value, name
        assert header["model_files"].startswith("sha256:"), name


# --------------------------------------------------------------------------- benchmark inputs


def test_benchmark_format_hf_is_a_config_error_before_anything_loads(tmp_path, monkeypatch):
    _no_model_load(monkeypatch)
    monkeypatch.setattr(evaluate_module, "load_bench", lambda b: pytest.fail("metadata read"))
    with pytest.raises(ConfigError) as e:
        run_eval(tmp_path / "out", "benchmark.format=hf")
    msg = str(e.value)
    assert "benchmark.format='hf': must be one of mmau, mmar, unified" in msg and "benchmark.source=<it>" in msg
    assert "\n" not in msg


def test_parquet_metadata_says_what_the_loader_reads(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from audiothink.benchmarks import load_mmau

    meta = tmp_path / "test_mini-00000-of-00001.parquet"
    pq.write_table(pa.table({"id": ["a"], "question": ["q"]}), meta)
    with pytest.raises(DataError) as e:
        load_mmau(meta)
    msg = str(e.value)
    assert "looks like a parquet file" in msg and "official JSON" in msg and "benchmark.source=<it>" in msg
    assert "UTF-8" not in msg
    for bench in ("mmar", "toy"):  # every format, the project's unified schema too
        with pytest.raises(DataError, match="looks like a parquet file"):
            run_eval(tmp_path / "out", f"benchmark={bench}", f"benchmark.meta={meta}",
                     "benchmark.generate_toy=false")


def test_a_missing_benchmark_path_names_the_setting(tmp_path, monkeypatch):
    from audiothink.evaluate import load_bench

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MMAU_ROOT", raising=False)
    monkeypatch.delenv("MMAR_ROOT", raising=False)
    with pytest.raises(DataError) as e:
        load_bench(eval_cfg(["benchmark=mmau_test_mini", "output_dir=/x"]).benchmark)
    assert str(e.value) == ("data/mmau/mmau-test-mini.json: metadata file not found (set by benchmark.meta = "
                            "${.root}/mmau-test-mini.json, benchmark.root = data/mmau (the default: MMAU_ROOT is "
                            "not set))")
    monkeypatch.setenv("MMAU_ROOT", str(tmp_path / "elsewhere"))
    with pytest.raises(DataError, match=r"benchmark.root = .*elsewhere \(from MMAU_ROOT\)"):
        load_bench(eval_cfg(["benchmark=mmau_test_mini", "output_dir=/x"]).benchmark)
    with pytest.raises(DataError, match=r"m.json: metadata file not found \(set by benchmark.meta = .*m.json\)"):
        load_bench(eval_cfg(["benchmark=mmau_test_mini", f"benchmark.meta={tmp_path}/m.json", "output_dir=/x"]
                            ).benchmark)
    with pytest.raises(DataError, match=r"neither MMAR-meta.jsonl nor MMAR-meta.json .*benchmark.root = data/mmar "
                                        r"\(the default: MMAR_ROOT is not set\)"):
        load_bench(eval_cfg(["benchmark=mmar", "output_dir=/x"]).benchmark)
    meta = make_mmau_fixture(tmp_path / "mmau")
    with pytest.raises(DataError, match=r"nowhere: audio folder not found \(set by benchmark.data_root = nowhere\)"):
        load_bench(eval_cfg(["benchmark=mmau_test_mini", f"benchmark.meta={meta}", "benchmark.data_root=nowhere",
                             "output_dir=/x"]).benchmark)


def test_unusable_audio_names_where_paths_are_joined(tmp_path):
    meta = make_mmau_fixture(tmp_path / "mmau")
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(DataError, match=rf"relative audio paths are joined onto benchmark.data_root = {other}\)"):
        run_eval(tmp_path / "out", "benchmark=mmau_test_mini", f"benchmark.meta={meta}",
                 f"benchmark.data_root={other}")


def test_file_hashes_are_every_byte_and_cached_by_stamp(tmp_path, monkeypatch):
    """Each file is hashed in full once per version; a rewrite is seen even when size and mtime are kept."""
    import hashlib
    import os

    from audiothink.benchmarks import store

    calls = []
    original = store._sha256
    monkeypatch.setattr(store, "_sha256", lambda p: calls.append(p) or original(p))
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 100_000)
    assert store.file_sha256([f, tmp_path / "missing"]) == [hashlib.sha256(b"a" * 100_000).hexdigest(), None]
    assert store.file_sha256([f]) and len(calls) == 1  # the second time from the cache
    st = f.stat()
    f.write_bytes(b"a" * 99_999 + b"b")  # one byte at the end, same size, mtime set back
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert store.file_sha256([f]) == [hashlib.sha256(b"a" * 99_999 + b"b").hexdigest()] and len(calls) == 2
