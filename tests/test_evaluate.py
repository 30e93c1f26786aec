"""python -m audiothink.evaluate end to end with the toy model on fixtures in the official MMAU test-mini
and MMAR metadata formats: breakdowns, submission files the official scorer accepts, reports, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from audiothink.benchmarks.mmar import CATEGORIES, MODALITIES
from audiothink.scoring import string_match
from audiothink.data import DataError
from audiothink.evaluate import evaluate, register_eval_resolvers
from audiothink.prompts import training_prompt
from tests.helpers import eval_cfg, make_mmar_fixture, make_mmau_fixture, run_eval

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
register_eval_resolvers()


def official_total(submission: Path, field: str) -> tuple[int, int]:
    """What the official script computes from our submission file: the rule over every item's field."""
    text = submission.read_text()
    rows = json.loads(text) if submission.suffix == ".json" else [json.loads(x) for x in text.splitlines()]
    return sum(string_match(r["answer"], r[field], r["choices"]) for r in rows), len(rows)


def test_prompt_is_trainings():
    cfg = eval_cfg([])
    assert cfg.prompt == training_prompt()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        assert compose("train").prompt == cfg.prompt


def test_mmau_test_mini_fixture(tmp_path, capsys):
    meta = make_mmau_fixture(tmp_path / "mmau")
    out = tmp_path / "out"
    r = run_eval(out, "benchmark=mmau_test_mini", f"benchmark.meta={meta}", "eval.batch_size=5",
                 "eval.max_new_tokens=24")
    printed = capsys.readouterr().out
    assert r["benchmark"]["items"] == 12 and r["benchmark"]["kind"] == "mmau"
    assert set(r["summary"]["by"]) == {"task", "difficulty", "sub-category"}
    assert list(r["summary"]["by"]["task"]) == ["sound", "music", "speech"]
    assert list(r["summary"]["by"]["difficulty"]) == ["easy", "medium", "hard"]
    for line in ("[task]", "[difficulty]", "[sub-category]"):
        assert line in printed
    o = r["summary"]["overall"]
    total = f"Total : {100 * o['correct'] / 12:.2f}% over 12 samples"
    assert r["lines"][-1] == total and total in printed
    assert any(line.startswith("sound : ") and line.endswith("over 4 samples") for line in r["lines"])
    # the submission file scores to the same number under the official rule, from either field
    sub = Path(r["submission"])
    assert sub.name == "submission_mmau-test-mini.json"
    assert official_total(sub, "model_output") == official_total(sub, "model_prediction") == (o["correct"], 12)
    rows = json.loads(sub.read_text())
    original = json.loads(meta.read_text())
    assert [{k: row[k] for k in item} for row, item in zip(rows, original)] == original
    for name in ("results.json", "report.md", "config.yaml", "predictions.jsonl", "chart_task.png",
                 "chart_difficulty.png", "chart_sub_category.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "version **unspecified" in report and "think rate" in report
    assert r["summary"]["overall"]["think_rate"] is not None
    assert "mean_think_tokens" in r["summary"]["by"]["difficulty"]["hard"]
    assert r["forgetting"] is None  # base model: nothing to compare with


@pytest.mark.parametrize("container", ["jsonl", "json"])
def test_mmar_fixture(tmp_path, container, capsys):
    """The released MMAR files' shape, quirks included: choice lists ending in "" (benchmark=mmar exited 2
    on the real file), a whitespace-only choice, padded text. Loaded, scored as the official script
    scores them, named in results.json, report.md and the printed output."""
    make_mmar_fixture(tmp_path / "mmar", container, quirks=True)
    r = run_eval(tmp_path / "out", "benchmark=mmar", f"benchmark.root={tmp_path / 'mmar'}", "eval.batch_size=7",
                 "eval.max_new_tokens=24", "eval.charts=false")
    printed = capsys.readouterr().out
    quirks = r["benchmark"]["quirks"]
    assert {k: v["items"] for k, v in quirks.items()} == {"empty_choice": 3, "padded_text": 1}
    assert quirks["empty_choice"]["ids"] == ["0001", "0004", "0006"]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["benchmark"]["quirks"] == quirks
    assert "empty_choice: 3 item(s)" in (tmp_path / "out" / "report.md").read_text()
    assert "metadata quirk (accepted, as by the official scorer) empty_choice: 3 item(s)" in printed
    assert r["benchmark"]["meta"].endswith(f"MMAR-meta.{container}")
    assert list(r["summary"]["by"]["modality"]) == list(MODALITIES)
    assert list(r["summary"]["by"]["category"]) == list(CATEGORIES)
    assert "[modality]" in r["lines"] and "[category]" in r["lines"] and "[sub-category]" in r["lines"]
    assert r["lines"][-1].endswith("over 14 samples")
    sub = Path(r["submission"])
    assert sub.name == f"submission_MMAR-meta.{container}"
    assert official_total(sub, "answer_prediction") == (r["summary"]["overall"]["correct"], 14)
    assert official_total(sub, "model_prediction") == (r["summary"]["overall"]["correct"], 14)
    # the rubric script needs thinking_prediction on every item ("" for a direct answer)
    text = sub.read_text()
    rows = json.loads(text) if container == "json" else [json.loads(x) for x in text.splitlines()]
    lines = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()[1:]
    preds = {x["id"]: x for x in map(json.loads, lines)}
    assert all(row["thinking_prediction"] == (preds[row["id"]]["think"] or "") for row in rows)
    assert rows[4]["choices"][-1] == ""  # the released item, as released


def test_mmau_test_without_answers_writes_the_submission(tmp_path):
    meta = make_mmau_fixture(tmp_path / "mmau", "mmau-test.json", with_answers=False)
    r = run_eval(tmp_path / "out", "benchmark=mmau_test", f"benchmark.meta={meta}", "eval.max_new_tokens=16",
                 "eval.charts=false")
    assert r["summary"]["overall"]["accuracy"] is None and "answers withheld" in r["lines"][0]
    rows = json.loads(Path(r["submission"]).read_text())
    assert len(rows) == 12 and all("model_output" in row and "answer" not in row for row in rows)


def test_unusable_audio_is_listed_or_counted_wrong(tmp_path):
    meta = make_mmau_fixture(tmp_path / "mmau")
    items = json.loads(meta.read_text())
    (tmp_path / "mmau" / items[0]["audio_id"]).unlink()
    (tmp_path / "mmau" / items[1]["audio_id"]).write_bytes(b"RIFF broken")
    with pytest.raises(DataError) as e:
        run_eval(tmp_path / "a", "benchmark=mmau_test_mini", f"benchmark.meta={meta}")
    assert "2 item(s)" in str(e.value) and "file not found" in str(e.value) and items[1]["id"] in str(e.value)
    r = run_eval(tmp_path / "b", "benchmark=mmau_test_mini", f"benchmark.meta={meta}", "eval.on_audio_error=wrong",
                 "eval.max_new_tokens=16", "eval.charts=false", "eval.max_failures=0")  # not generation failures
    assert r["summary"]["overall"]["failures"] == 2 and r["summary"]["overall"]["n_scored"] == 12
    recs = [json.loads(x) for x in (tmp_path / "b" / "predictions.jsonl").read_text().splitlines()[1:]]
    bad = [x for x in recs if x["error"]]
    assert {x["id"] for x in bad} == {items[0]["id"], items[1]["id"]} and all(x["prediction"] == "" for x in bad)


@pytest.mark.parametrize("bench", sorted(p.stem for p in (CONFIGS / "benchmark").glob("*.yaml")))
@pytest.mark.parametrize("model", ["toy", "qwen2_audio_7b"])
def test_every_benchmark_config_composes(bench, model):
    from omegaconf import OmegaConf

    cfg = eval_cfg([f"benchmark={bench}", f"model={model}", "output_dir=/x"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["benchmark"]["name"] == bench and resolved["benchmark"]["format"] in ("mmau", "mmar", "unified")
    assert resolved["prompt"] == training_prompt()
    assert (resolved["eval"]["max_new_tokens"] == 48) == (bench == "toy")  # the toy's short answers


def test_generate_answers_unchanged_for_training(toy_model_dir, toy_files):
    """The training summary's path (generate_answers) and the benchmark path give the same completions."""
    from audiothink.data import load_samples
    from audiothink.inference import generate_answers, generate_batch
    from tests.helpers import PROMPT, load_toy

    model, processor = load_toy(toy_model_dir)
    samples = load_samples(toy_files["eval"]).samples[:6]
    texts = generate_answers(model, processor, samples, PROMPT, batch_size=6, max_new_tokens=16)
    assert texts == generate_batch(model.eval(), processor, samples, PROMPT, max_new_tokens=16).texts
    assert all(isinstance(t, str) for t in texts)
