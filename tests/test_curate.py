"""`python -m audiothink.curate`: the items a model answers right without their audio. The rule (a positional
guess is never listed), the entry point on the toy (its list is what training's data.exclude drops), and the
settings checked before anything loads. data.exclude itself: tests/sources/test_sources_exclude.py; the
command lines: tests/e2e/test_curate_cli.py."""

from __future__ import annotations

import json

import pytest

from audiothink.data import Sample
from audiothink.plumbing.errors import ConfigError
from tests.helpers import CONFIGS, data_cfg


def curate_cfg(overrides):
    from hydra import compose, initialize_config_dir

    import audiothink.curate  # noqa: F401 - registers the config's resolvers

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("curate", overrides=list(overrides))


# --------------------------------------------------------------------------- the rule


def test_needed_orders_round_up_and_a_positional_guess_is_never_listed():
    from audiothink.benchmarks.base import Benchmark
    from audiothink.curate import judge, needed, rotated

    assert [needed(n, 0.75) for n in (1, 2, 3, 4)] == [1, 2, 3, 3]
    assert [needed(n, 1.0) for n in (1, 3)] == [1, 3] and needed(4, 0.5) == 2
    samples = [Sample(id=f"q{i}", audio=("x.wav",), question="which?", choices=("cat", "dog", "cow", "owl"),
                      answer=a, task="t") for i, a in enumerate(("cat", "dog", "owl"))]
    bench = Benchmark(name="b", kind="unified", version="v", meta_path=CONFIGS, samples=samples,
                      items=[{}] * 3, groups=[{"task": "t"}] * 3, dimensions=("task",))
    orders = [rotated(bench, r) for r in range(4)]
    # the gold option sits at a different position in every order
    for s in samples:
        assert len({b.samples[b.keys.index(s.id)].choices.index(s.answer) for b in orders}) == 4

    def records(pick):  # a model answering pick(the choices it is shown, the item) in every order
        return [{k: {"key": k, "output": f"<answer>{pick(s.choices, s)}</answer>", "prediction": pick(s.choices, s)}
                 for k, s in zip(b.keys, b.samples)} for b in orders]

    real = {s.id: {"output": "<answer>cat</answer>", "prediction": "cat"} for s in samples}
    first = judge(bench, real, orders, records(lambda cs, s: cs[0]), 0.75)  # always (A): right in one order
    assert [r["right_without_audio"] for r in first] == [1, 1, 1] and not any(r["listed"] for r in first)
    text = judge(bench, real, orders, records(lambda cs, s: s.answer), 0.75)  # the answer read from the text
    assert all(r["listed"] and r["right_without_audio"] == 4 for r in text)
    # the answer with audio is recorded, and does not decide the listing
    assert [r["with_audio"]["right"] for r in text] == [True, False, False]


# --------------------------------------------------------------------------- the entry point on the toy


@pytest.mark.slow
def test_curate_lists_what_the_toy_answers_in_silence(tmp_path, toy_files):
    from audiothink.curate import LIST_FILE, curate

    out = tmp_path / "run"
    summary = curate(curate_cfg([f"output_dir={out}", "data=jsonl", f"data.train={toy_files['train']}",
                                 "curate.progress=false", "curate.batch_size=48"]))
    rows = [json.loads(line) for line in (out / "curate.jsonl").read_text().splitlines()]
    assert len(rows) == summary["overall"]["items"] == 48
    text = (out / LIST_FILE).read_text().splitlines()
    assert text[0].startswith("# ") and all(not line.startswith("#") for line in text[4:])
    assert text[4:] == [r["id"] for r in rows if r["listed"]]
    for r in rows:  # three choices: three orders, and the rule (0.75 of 3 is 3)
        assert r["orders"] == 3 and len({tuple(a["choices"]) for a in r["without_audio"]}) == 3
        assert r["listed"] == (r["right_without_audio"] == 3)
    # the silent passes did not hear the audio: the one-clip tasks are heard right, and the silent answer is
    # the question's prior (one word per task), so it is right only where that word is the answer
    for task in ("pitch", "count"):
        b = summary["by_task"][task]
        assert b["right_with_audio"] >= 0.9 * b["items"] and 0 < b["listed"] < 0.6 * b["items"]
        said = {a["prediction"] for r in rows if r["task"] == task for a in r["without_audio"]}
        assert len(said) == 1
        assert all(r["listed"] == (r["answer"] in said) for r in rows if r["task"] == task)
    assert sum(b["listed"] for b in summary["by_task"].values()) == summary["overall"]["listed"] > 0
    assert json.loads((out / "summary.json").read_text())["by_task"] == summary["by_task"]
    # training drops exactly the listed ids
    from audiothink.sources import load_training_data

    kept, _ = load_training_data(data_cfg("jsonl", train=str(toy_files["train"]), exclude=str(out / LIST_FILE)),
                                 max_audio_seconds=1.0)
    assert {s.id for s in kept} == {r["id"] for r in rows if not r["listed"]}


def test_curate_settings_are_checked_before_anything_loads():
    from audiothink.curate import check_curate_config

    for bad, match in (("curate.min_right_share=0", "min_right_share"), ("curate.rotations=0", "rotations"),
                       ("curate.replace=zeros", "silence or noise"), ("curate.limit=0", "limit")):
        with pytest.raises(ConfigError, match=match):
            check_curate_config(curate_cfg(["output_dir=/tmp/x", bad]))
    check_curate_config(curate_cfg(["output_dir=/tmp/x"]))
