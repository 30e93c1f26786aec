"""python -m audiothink.evaluate on hub copies (benchmark.source) with the toy model: each copy, built by the test
from the official-format fixture in that copy's columns with the audio embedded, gives the same results.json lines
as the official layout of the same items, and the official rule agrees on its submission file; differences from
the official metadata stop the run before the model loads, or are scored as the official items with the list
printed and written. The loader alone: tests/benchmarks/test_hub.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audiothink.benchmarks.report import not_comparable
from audiothink.data import DataError
from audiothink.scoring import string_match
from tests.helpers import HUB_LAYOUTS, hub_columns, make_hub_copy, make_mmar_fixture, make_mmau_fixture, run_eval

pytestmark = pytest.mark.slow  # a toy-model evaluation per copy (about 10 s each on 2 free cores)

# toy answers are a few words: short completions keep each run small; charts are tested elsewhere
FAST = ("eval.max_new_tokens=12", "eval.batch_size=16", "eval.charts=false")
BENCH = {"mmau": "mmau_test_mini", "mmar": "mmar"}
FIELDS = {"mmau": ("model_output", "model_prediction"), "mmar": ("answer_prediction", "model_prediction")}


def official_total(submission: Path, field: str) -> tuple[int, int]:
    """What the official scripts compute from a submission file: their rule over every item's ``field``."""
    text = submission.read_text()
    rows = json.loads(text) if submission.suffix == ".json" else [json.loads(x) for x in text.splitlines()]
    return sum(string_match(r["answer"], r[field], r["choices"]) for r in rows), len(rows)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """kind -> (official metadata, the official layout's results): one toy evaluation per benchmark."""
    root = tmp_path_factory.mktemp("official")
    out = {}
    for kind, meta in (("mmau", make_mmau_fixture(root / "mmau")), ("mmar", make_mmar_fixture(root / "mmar",
                                                                                            quirks=True))):
        where = f"benchmark.meta={meta}" if kind == "mmau" else f"benchmark.root={meta.parent}"
        out[kind] = meta, run_eval(root / f"out-{kind}", f"benchmark={BENCH[kind]}", where, *FAST)
    return out


def hub_overrides(kind: str, layout: str, meta: Path, src: Path, tmp_path: Path) -> list[str]:
    # the official metadata named too, so the copy is checked against it (and found the same)
    where = f"benchmark.meta={meta}" if kind == "mmau" else f"benchmark.root={meta.parent}"
    extra = [f"benchmark.data_root={meta.parent}"] if layout == "BoJack/MMAR" else []  # it names files, embeds none
    return [f"benchmark={BENCH[kind]}", f"benchmark.source={src}", f"benchmark.cache_dir={tmp_path / 'cache'}",
            where, *extra, *FAST]


@pytest.mark.parametrize("kind,layout,form", [(k, lay, "parquet") for k, lays in HUB_LAYOUTS.items() for lay in lays]
                         + [("mmar", "ngqtrung/mmar", "save_to_disk")])
def test_hub_copy_evaluates_to_the_official_results(reference, tmp_path, capsys, kind, layout, form):
    meta, ref = reference[kind]
    src = make_hub_copy(meta, layout, tmp_path / "copy", form)
    r = run_eval(tmp_path / "out", *hub_overrides(kind, layout, meta, src, tmp_path))
    printed = capsys.readouterr().out
    assert r["lines"] == ref["lines"]  # the same results.json lines
    assert r["summary"] == ref["summary"]
    source = r["benchmark"]["source"]
    assert source["layout"] == layout and source["checked"] and source["differences"] == []
    assert source["format"] == form and len(r["benchmark"]["data_sha256"]) == 64
    assert r["benchmark"]["items_sha256"] == ref["benchmark"]["items_sha256"]
    assert not_comparable(ref, r) == []  # the same items, prompt and decoding: comparable
    assert f"source: hub copy {src} (layout {layout}" in printed and "same ids, answers and choices" in printed
    sub = Path(r["submission"])
    for field in FIELDS[kind]:  # the official scripts agree on the copy's submission file
        assert official_total(sub, field) == (r["summary"]["overall"]["correct"], r["benchmark"]["items"])
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"layout {layout}" in report and r["prompt_sha256"] in report


def test_mmau_test_split_copy_writes_the_submission(tmp_path):
    """benchmark=mmau_test on a copy of the test split (answers withheld): checked against the official test
    metadata, unscored, and the submission file is the official items plus the predictions."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = make_mmau_fixture(tmp_path / "mmau", "mmau-test.json", with_answers=False)
    cols = hub_columns(meta, "lmms-lab-audio/mmau")
    cols["answer"] = [None] * len(cols["id"])  # one schema for both splits: the test split's answers are null
    src = tmp_path / "copy" / "test-00000-of-00001.parquet"
    src.parent.mkdir()
    pq.write_table(pa.table({**cols, "answer": pa.array(cols["answer"], pa.string())}), src)
    r = run_eval(tmp_path / "out", *hub_overrides("mmau", "lmms-lab-audio/mmau", meta, src, tmp_path)[1:],
                 "benchmark=mmau_test")
    assert r["benchmark"]["name"] == "mmau_test" and "answers withheld" in r["lines"][0]
    assert r["benchmark"]["source"]["checked"] and r["benchmark"]["source"]["differences"] == []
    rows = json.loads(Path(r["submission"]).read_text())
    original = json.loads(meta.read_text())
    assert [{k: row[k] for k in item} for row, item in zip(rows, original)] == \
           [{**item, "category": item["category"][0] if isinstance(item["category"], list) else item["category"]}
            for item in original]  # the copy's category column holds strings (tests/helpers.py: _label)
    assert all("model_output" in row and "answer" not in row for row in rows)


def test_differences_stop_the_run_or_are_scored_as_official_with_the_list(reference, tmp_path, capsys, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from audiothink import evaluate as evaluate_module

    meta, ref = reference["mmau"]
    cols = hub_columns(meta, "AudioLLMs/MMAU-mini")
    cols["answer"][0] = cols["choices"][0][0]  # "(A) Dog"; the official answer is "Bird"
    src = tmp_path / "copy.parquet"
    pq.write_table(pa.table(cols), src)
    ids = [item["id"] for item in json.loads(meta.read_text())]
    line = f'copy.parquet:0 id={ids[0]}: answer: copy "Dog" / official "Bird"'

    def no_model(cfg):
        raise AssertionError("the model loaded")

    with monkeypatch.context() as m:
        m.setattr(evaluate_module, "load_model", no_model)
        with pytest.raises(DataError) as e:
            run_eval(tmp_path / "refused", *hub_overrides("mmau", "AudioLLMs/MMAU-mini", meta, src, tmp_path))
    assert line in str(e.value) and "it is not scored" in str(e.value)

    r = run_eval(tmp_path / "out", *hub_overrides("mmau", "AudioLLMs/MMAU-mini", meta, src, tmp_path),
                 "benchmark.on_mismatch=official")
    printed = capsys.readouterr().out
    assert r["lines"] == ref["lines"]  # the official items were scored
    assert f"  {line}" in printed and "1 difference(s) from the official metadata" in printed
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["benchmark"]["source"]["differences"] == [
        {"file": "copy.parquet:0", "id": ids[0], "field": "answer", "copy": "Dog", "official": "Bird"}]
    assert line in (tmp_path / "out" / "report.md").read_text()


def test_results_of_other_prompts_or_items_are_not_comparable(reference):
    mmau, mmar = reference["mmau"][1], reference["mmar"][1]
    assert not_comparable(mmau, mmau) == []
    other_prompt = {**mmau, "prompt_sha256": "0" * 64}
    assert any(r.startswith("prompt:") for r in not_comparable(mmau, other_prompt))
    assert any("other items" in r for r in not_comparable(mmau, mmar))
