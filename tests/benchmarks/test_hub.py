"""audiothink.benchmarks.hub: MMAU and MMAR hub copies (parquet, a folder of parquet files, save_to_disk) built by
the tests from the official-format fixtures, in each copy's columns, read back as the official items; layouts
detected or refused with their columns; differences from the official metadata listed item by item.
With the toy model, end to end: tests/test_evaluate_hub.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audiothink.benchmarks import load_mmar, load_mmau
from audiothink.benchmarks.hub import LAYOUTS, load_hub
from audiothink.benchmarks.report import score_items
from audiothink.data import DataError
from tests.helpers import HUB_LAYOUTS, hub_columns, make_hub_copy, make_mmar_fixture, make_mmau_fixture, \
    prediction_records

LAYOUT_KIND = [(kind, layout) for kind, layouts in HUB_LAYOUTS.items() for layout in layouts]


def official(tmp_path: Path, kind: str, **kw):
    """The official fixture of ``kind`` (MMAR with the release's quirks: empty and padded choices) and its loader."""
    if kind == "mmau":
        meta = make_mmau_fixture(tmp_path / "mmau", **kw)
        return meta, load_mmau(meta)
    meta = make_mmar_fixture(tmp_path / "mmar", quirks=True)
    return meta, load_mmar(meta)


def read_hub(tmp_path, kind, layout, meta, src, **kw):
    return load_hub(src, kind, cache_dir=tmp_path / "cache", data_root=meta.parent if layout == "BoJack/MMAR" else None,
                    **kw)


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("kind,layout", LAYOUT_KIND)
def test_hub_copy_reads_as_the_official_items(tmp_path, kind, layout):
    """Each copy's columns, detected, map back onto the official items: what the model is shown (question, choices,
    the same audio bytes), the released answer and choices the official rule reads, the breakdown labels and keys;
    so every prediction scores the same."""
    meta, ref = official(tmp_path, kind)
    b = read_hub(tmp_path, kind, layout, meta, make_hub_copy(meta, layout, tmp_path / "copy"))
    assert b.source["layout"] == b.source["detected_layout"] == layout and b.kind == kind
    assert b.keys == ref.keys and b.groups == ref.groups and b.scored == ref.scored
    assert [(s.id, s.question, s.choices, s.answer) for s in b.samples] == \
           [(s.id, s.question, s.choices, s.answer) for s in ref.samples]
    assert [(it["answer"], it["choices"]) for it in b.items] == [(it["answer"], it["choices"]) for it in ref.items]
    assert [sha(s.audio[0]) for s in b.samples] == [sha(s.audio[0]) for s in ref.samples]
    # one prediction per kind of outcome: the answer, another option, the answer's letter, nothing
    preds = [[s.answer, s.choices[-1], "(A)", ""][i % 4] for i, s in enumerate(ref.samples)]
    assert score_items(b, prediction_records(b, preds)) == score_items(ref, prediction_records(ref, preds))
    assert b.container == ref.container and b.submission_fields == ref.submission_fields
    assert len(b.source["sha256"]) == 64 and b.source["format"] == "parquet"


@pytest.mark.parametrize("layout", ["AudioLLMs/MMAU-mini", "ngqtrung/mmar"])
@pytest.mark.parametrize("form", ["save_to_disk", "folder"])
def test_save_to_disk_and_parquet_folders_read_the_same(tmp_path, layout, form):
    kind = "mmau" if "MMAU" in layout else "mmar"
    meta, ref = official(tmp_path, kind)
    b = read_hub(tmp_path, kind, layout, meta, make_hub_copy(meta, layout, tmp_path / "copy", form))
    assert b.source["format"] == ("save_to_disk" if form == "save_to_disk" else "parquet")
    assert [(s.id, s.question, s.choices, s.answer) for s in b.samples] == \
           [(s.id, s.question, s.choices, s.answer) for s in ref.samples]
    assert [sha(s.audio[0]) for s in b.samples] == [sha(s.audio[0]) for s in ref.samples]


@pytest.mark.parametrize("layout", ["gamma-lab-umd/MMAU-test-mini", "lmms-lab-audio/mmau"])
def test_mmau_test_split_copy_without_answers_is_unscored(tmp_path, layout):
    meta, ref = official(tmp_path, "mmau", name="mmau-test.json", with_answers=False)
    b = read_hub(tmp_path, "mmau", layout, meta, make_hub_copy(meta, layout, tmp_path / "copy"))
    assert not any(b.scored) and not any(ref.scored) and all("answer" not in it for it in b.items)


def test_unknown_columns_are_one_error_naming_them_and_the_layouts(tmp_path):
    meta, _ = official(tmp_path, "mmau")
    path = tmp_path / "odd.parquet"
    pq.write_table(pa.table({"wav": [b"x"], "prompt": ["q"], "options": [["a", "b"]]}), path)
    with pytest.raises(DataError) as e:
        load_hub(path, "mmau", cache_dir=tmp_path / "cache")
    msg = str(e.value)
    assert "wav, prompt, options" in msg and all(name in msg for name in LAYOUTS)
    with pytest.raises(DataError, match="needs the column"):  # a layout named that the columns do not fit
        load_hub(path, "mmau", cache_dir=tmp_path / "cache", layout="lmms-lab-audio/mmau")
    mmar_copy = make_hub_copy(make_mmar_fixture(tmp_path / "mmar"), "ngqtrung/mmar", tmp_path / "mmar-copy")
    with pytest.raises(DataError, match="is a copy of MMAR .*not of MMAU"):
        load_hub(mmar_copy, "mmau", cache_dir=tmp_path / "cache")


def test_a_lettered_answer_must_name_its_option(tmp_path):
    """AudioLLMs' answer "(B) text": a letter whose option has another text is listed, not guessed."""
    meta, _ = official(tmp_path, "mmau")
    cols = hub_columns(meta, "AudioLLMs/MMAU-mini")
    cols["answer"][2] = "(B) a forest"  # option B is "(B) a train station"
    path = tmp_path / "copy.parquet"
    pq.write_table(pa.table(cols), path)
    with pytest.raises(DataError) as e:
        load_hub(path, "mmau", cache_dir=tmp_path / "cache")
    assert "copy.parquet:2" in str(e.value) and "names option B, whose text is 'a train station'" in str(e.value)


def _edited_copy(tmp_path, meta, layout, edit) -> Path:
    cols = hub_columns(meta, layout)
    edit(cols)
    path = tmp_path / "edited" / "test-00000-of-00001.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table(cols), path)
    return path


def test_differences_from_the_official_metadata_are_listed_and_refused(tmp_path):
    """Another answer (a letter naming another option), another choice, an item missing: each listed with the
    copy's file and row, the id, the field and both values; the copy is not scored."""
    meta, ref = official(tmp_path, "mmar")
    ids = [s.id for s in ref.samples]

    def edit(cols):
        cols["answer"][1] = "A"  # the official answer is option B, "clip two"
        cols["choices"][3][0] = "A. clip 1"
        for values in cols.values():
            del values[13]

    copy = _edited_copy(tmp_path, meta, "ngqtrung/mmar", edit)
    with pytest.raises(DataError) as e:
        load_hub(copy, "mmar", cache_dir=tmp_path / "cache", official=meta)
    msg = str(e.value)
    assert "differs from the official metadata" in msg and "in 3 place(s)" in msg
    assert f'test-00000-of-00001.parquet:1 id={ids[1]}: answer: copy "clip one" / official "clip two"' in msg
    assert (f'test-00000-of-00001.parquet:3 id={ids[3]}: choices: copy ["clip 1", "clip two"] / official '
            '["clip one", "clip two"]') in msg
    assert f"{meta} id={ids[13]}: id: copy (absent) / official \"{ids[13]}\"" in msg
    # items on one side only: the message does not offer on_mismatch=official, which would refuse them too
    assert "hold different items" in msg and "on_mismatch=official scores" not in msg
    # items on one side only: refused even with on_mismatch=official (not the official benchmark)
    with pytest.raises(DataError, match="hold different items"):
        load_hub(copy, "mmar", cache_dir=tmp_path / "cache", official=meta, on_mismatch="official")


def test_on_mismatch_official_scores_the_official_items_with_the_list_kept(tmp_path):
    meta, ref = official(tmp_path, "mmau")

    def edit(cols):
        cols["answer"][0] = "Dog"

    copy = _edited_copy(tmp_path, meta, "gamma-lab-umd/MMAU-test-mini", edit)
    b = load_hub(copy, "mmau", cache_dir=tmp_path / "cache", official=meta, on_mismatch="official")
    assert b.items == ref.items and b.samples[0].answer == "Bird"  # the official answer is what is scored
    diffs = b.source["differences"]
    assert diffs == [{"file": "test-00000-of-00001.parquet:0", "id": ref.samples[0].id, "field": "answer",
                      "copy": "Dog", "official": "Bird"}]
    assert b.source["checked"] and b.source["official_metadata"] == str(meta)
    unchecked = load_hub(copy, "mmau", cache_dir=tmp_path / "cache")  # no official file: the copy's own answer
    assert unchecked.samples[0].answer == "Dog" and not unchecked.source["checked"]


def test_a_folder_with_several_splits_needs_benchmark_split(tmp_path):
    meta, ref = official(tmp_path, "mmau")
    folder = tmp_path / "lmms"
    (folder / "data").mkdir(parents=True)
    table = pa.table(hub_columns(meta, "lmms-lab-audio/mmau"))
    pq.write_table(table, folder / "data" / "test_mini-00000-of-00001.parquet")
    pq.write_table(table.slice(0, 3), folder / "data" / "test-00000-of-00001.parquet")
    with pytest.raises(DataError, match="several splits .*test, test_mini.*benchmark.split"):
        load_hub(folder, "mmau", cache_dir=tmp_path / "cache")
    assert len(load_hub(folder, "mmau", cache_dir=tmp_path / "cache", split="test_mini")) == 12
    assert len(load_hub(folder, "mmau", cache_dir=tmp_path / "cache", split="test")) == 3


def test_other_attributes_as_json_or_python_text(tmp_path):
    """gamma-lab-umd's other_attributes read as JSON text, as a Python literal (what str(dict) writes) or a struct."""
    meta, ref = official(tmp_path, "mmau")
    cols = hub_columns(meta, "gamma-lab-umd/MMAU-test-mini")
    cols["other_attributes"] = [repr(json.loads(a)) if i % 2 else a for i, a in enumerate(cols["other_attributes"])]
    path = tmp_path / "copy.parquet"
    pq.write_table(pa.table(cols), path)
    b = load_hub(path, "mmau", cache_dir=tmp_path / "cache")
    assert b.groups == ref.groups and [s.id for s in b.samples] == [s.id for s in ref.samples]


@pytest.mark.parametrize("override,message", [
    ("benchmark.layout=lmms-lab/mmau", "benchmark.layout='lmms-lab/mmau': must be null (detect it) or one of "
                                       "gamma-lab-umd/MMAU-test-mini, AudioLLMs/MMAU-mini"),
    ("benchmark.on_mismatch=ignore", "benchmark.on_mismatch='ignore': must be error or official"),
    ("benchmark.format=unified", "benchmark.format='unified' reads neither"),
])
def test_hub_settings_are_checked_before_anything_loads(tmp_path, override, message):
    from audiothink.evaluate import check_eval_config
    from audiothink.plumbing.errors import ConfigError
    from tests.helpers import eval_cfg

    cfg = eval_cfg(["benchmark=mmau_test_mini", f"benchmark.source={tmp_path / 'nowhere.parquet'}", override,
                    "output_dir=/x"])
    with pytest.raises(ConfigError) as e:
        check_eval_config(cfg)  # the copy is not there: nothing was read
    assert message in str(e.value)
    check_eval_config(eval_cfg(["benchmark=mmau_test_mini", f"benchmark.source={tmp_path}", "output_dir=/x"]))


def test_the_hub_revision_is_read_from_a_hub_cache_snapshot(tmp_path):
    meta, _ = official(tmp_path, "mmar")
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "datasets--ngqtrung--mmar" / "snapshots" / commit / "data"
    b = load_hub(make_hub_copy(meta, "ngqtrung/mmar", snapshot), "mmar", cache_dir=tmp_path / "cache")
    assert b.source["revision"] == commit
    assert load_hub(make_hub_copy(meta, "ngqtrung/mmar", tmp_path / "plain"), "mmar",
                    cache_dir=tmp_path / "cache").source["revision"] is None


def test_rows_without_ids_are_listed_not_compared(tmp_path):
    meta, _ = official(tmp_path, "mmar")

    def edit(cols):
        cols["id"][4] = None

    copy = _edited_copy(tmp_path, meta, "ngqtrung/mmar", edit)
    with pytest.raises(DataError) as e:
        load_hub(copy, "mmar", cache_dir=tmp_path / "cache", official=meta)
    assert "test-00000-of-00001.parquet:4 id=?: id: missing" in str(e.value)
    assert "differs from the official metadata" not in str(e.value)
