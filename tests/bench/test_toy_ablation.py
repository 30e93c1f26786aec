"""bench/toy_ablation.py: the rows that isolate each judge reward build the rewards they name; the table shows
the chain shares per difficulty, and the before row the sampled ones."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from audiothink.reward_api import build_rewards
from tests.helpers import load_bench_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "bench"))  # the script imports its neighbours, as when run from bench/
    module = load_bench_script("toy_ablation")
    yield module
    sys.path.remove(str(ROOT / "bench"))


def _rewards(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    funcs, weights = build_rewards(cfg.reward)
    return cfg, {f.__name__: f for f in funcs}, dict(zip([f.__name__ for f in funcs], weights))


def test_judge_rows_build_the_rewards_they_isolate(bench):
    """b_cons is row b's reward times the consistency factor, always thinking; d_all judges consistency on every
    answer (d: correct ones only); f adds the toy logic judge's think quality to d."""
    cfg, funcs, weights = _rewards(bench.ROWS["b_cons"][1])
    assert cfg.force_mode == "think" and bench.ROWS["b_cons"][2] == "think"
    assert funcs["total"].expression == "accuracy * (1 + 0.5 * consistency) + 0.5 * format" and weights["total"] == 1
    _, d, _ = _rewards(bench.ROWS["d"][1])
    _, d_all, _ = _rewards(bench.ROWS["d_all"][1])
    assert d["consistency"].only_correct is True and d_all["consistency"].only_correct is False
    assert d_all["total"].expression == d["total"].expression
    cfg, f, _ = _rewards(bench.ROWS["f"][1])
    assert type(f["think_quality"].judge).__name__ == "ToyLogicJudge" and cfg.force_mode is None
    assert f["total"].expression == d["total"].expression + " + think_quality"
    assert bench.DEFAULT_ROWS == ["before", "a", "b", "c", "d", "e"]  # a plain run is the issue-13 ladder


def test_table_shows_the_chain_shares_per_difficulty(bench, capsys):
    shares = {"think/inconsistent_share/easy": 0.125, "think/inconsistent_share/hard": 0.25,
              "think/invalid_chain_share/hard": 0.5}
    points = bench.chain_figures(shares)
    assert points == {"inconsistent_easy": 12.5, "inconsistent_hard": 25.0, "invalid_easy": None, "invalid_hard": 50.0}
    sampled = {"temperature": 1.2, "samples": 8, "think_easy": 30.0, "think_hard": 40.0, "thought_out": 840,
               "correct_thought_out": 600, "inconsistent_easy": 14.0, "inconsistent_hard": 11.5,
               "inconsistent_overall": 12.5, "invalid_easy": 21.0, "invalid_hard": 19.25, "invalid_overall": 20.0,
               "invalid_correct_overall": 7.75}
    row = {"acc": 70.0, "acc_easy": 100.0, "acc_hard": 40.0, "think_easy": 0.0, "think_hard": 1.0, "tokens": 4.0,
           "tokens_easy": 4.0, "tokens_hard": 4.2, "consistency": 75.0, **points, "sampled": sampled}
    trained = {**row, "wall_s": 400.0, "sampled": {**sampled, "invalid_correct_overall": 0.5, "invalid_easy": None}}
    bench.print_table({"before": row, "f": trained})
    out = capsys.readouterr().out.splitlines()
    greedy = [line for line in out if line.startswith("before (warm start)")]
    assert "12.5/25.0" in greedy[0] and "-/50.0" in greedy[0]
    # the sampled table: every row, sampled as the rollouts; thought-out count, shares per difficulty and overall,
    # and the share of invalid chains among the correct thought-out answers (issue 21's "lucky" chains)
    assert any(line.startswith("sampled (T 1.2, 8 per item)") for line in out)
    before = greedy[1].split()
    assert before[3:] == ["30.0/40.0", "840", "14.0/11.5", "12.5%", "21.0/19.2", "20.0%", "600", "7.8%"], before
    f = [line for line in out if line.startswith("(f)")][1].split()
    assert f[-5:] == ["12.5%", "-/19.2", "20.0%", "600", "0.5%"], f


def test_the_mistakes_warm_start_is_the_recorded_recipe(bench, tmp_path, monkeypatch):
    """--warmstart-mistakes builds what bench/RESULTS.md's judge rows start from: the warm start's SFT rows
    (every argument one its CLI takes: parsed by it, up to the rows' writing) and an SFT run of the committed
    checkpoint on them (every override one the sft config composes with)."""
    from audiothink.toy import TOY_MODEL_DIR, warmstart

    ws, sft = bench.mistakes_commands((0.5, 0.2), "slip", 1, tmp_path / "rows", tmp_path / "sft")
    assert ws[0] == "audiothink.toy.warmstart" and sft[0] == "audiothink.sft"
    monkeypatch.setattr(warmstart, "write_sft_rows", lambda out, args, tokenizer, processor: args)
    args = warmstart.main(ws[1:])
    assert (args.sft_rows, args.think_share, args.inconsistent_share, args.inconsistent_kind, args.invalid_share,
            args.steps, args.seed) == (tmp_path / "rows", 1.0, 0.5, "slip", 0.2, 400, 1)
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("sft", overrides=[o for o in sft[1:] if not o.startswith("hydra.")])
    assert cfg.model.path == str(TOY_MODEL_DIR) and cfg.data.train == f"{tmp_path / 'rows'}/train.jsonl"
    assert (cfg.sft.max_steps, cfg.sft.learning_rate, cfg.sft.shuffle, cfg.seed) == (300, 3e-4, False, 1)
    assert f"hydra.run.dir={tmp_path / 'sft'}" in sft
    assert (bench.MISTAKE_SHARES, bench.MISTAKE_KIND) == ((0.5, 0.2), "slip")
    ws, _ = bench.mistakes_commands((0.5, 0.2), "slip", 1, tmp_path / "rows", tmp_path / "sft", "skip")
    assert warmstart.main(ws[1:]).invalid_kind == "skip"
    assert "--invalid-kind" not in bench.mistakes_commands((0.5, 0.2), "slip", 1, tmp_path, tmp_path)[0]


def test_the_mistakes_warm_start_is_built_once_and_never_half(bench, tmp_path, monkeypatch):
    """mistakes_warmstart: a failed build leaves neither the cache folder nor its temporary rows (the next call
    builds again); a finished one is moved into place with its recipe beside the weights, and reused without
    running anything. The two commands are stood in for (they are tested above and run in bench/RESULTS.md)."""
    import subprocess

    import toy_learning

    calls: list[list[str]] = []
    fail = {"sft": True}

    def fake_run(cmd, log=None):
        calls.append(cmd)
        if "audiothink.sft" in cmd:
            if fail["sft"]:
                raise subprocess.CalledProcessError(1, cmd)
            run_dir = Path(next(c for c in cmd if c.startswith("hydra.run.dir=")).split("=", 1)[1])
            (run_dir / "final").mkdir(parents=True)
            (run_dir / "final" / "config.json").write_text("{}")
        else:
            Path(cmd[cmd.index("--sft-rows") + 1]).mkdir(parents=True)
        return 0.0

    monkeypatch.setattr(toy_learning, "run_command", fake_run)
    monkeypatch.setenv("AUDIOTHINK_CACHE", str(tmp_path))
    with pytest.raises(subprocess.CalledProcessError):
        bench.mistakes_warmstart((0.5, 0.2), 3, "slip")
    assert list((tmp_path / "warmstart-mistakes").iterdir()) == []  # nothing half-built, no rows left behind
    fail["sft"] = False
    out = bench.mistakes_warmstart((0.5, 0.2), 3, "slip")
    assert out == tmp_path / "warmstart-mistakes" / "sft-slip0.5-invalid0.2-seed3" and (out / "config.json").is_file()
    assert [p.name for p in (tmp_path / "warmstart-mistakes").iterdir()] == [out.name]
    recipe = json.loads((out / "mistakes_recipe.json").read_text())["commands"]
    assert [c[2] for c in recipe] == ["audiothink.toy.warmstart", "audiothink.sft"]
    n = len(calls)
    assert bench.mistakes_warmstart((0.5, 0.2), 3, "slip") == out and len(calls) == n  # reused, nothing run
    skip = bench.mistakes_warmstart((0.5, 0.2), 3, "slip", "skip")  # another kind: its own folder, its own build
    assert skip.name == "sft-slip0.5-skip0.2-seed3" and len(calls) == n + 2
    assert "--invalid-kind" in json.loads((skip / "mistakes_recipe.json").read_text())["commands"][0]


@pytest.mark.parametrize("flag", [["--inconsistent-kind", "slip"], ["--invalid-kind", "skip"]])
def test_a_mistake_kind_needs_the_mistakes_warm_start(bench, tmp_path, flag):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--rows", "before", *flag, "--out", str(tmp_path / "o")])
    assert exc.value.code == 2


def test_the_bench_offers_every_kind_the_warm_start_has(bench, tmp_path, capsys):
    """bench/toy_ablation.py keeps its --inconsistent-kind / --invalid-kind choices as literals (its --help and
    usage errors import no torch); they must be the warm start's kinds, no more and no fewer: each one reaches the
    --warmstart-mistakes check (not argparse's invalid choice)."""
    from audiothink.toy import warmstart

    for flag, kinds in (("--inconsistent-kind", warmstart.INCONSISTENT_KINDS),
                        ("--invalid-kind", warmstart.INVALID_KINDS)):
        for kind in (*kinds, "typo"):
            with pytest.raises(SystemExit) as exc:
                bench.main(["--rows", "before", flag, kind, "--out", str(tmp_path / "o")])
            err = capsys.readouterr().err
            assert exc.value.code == 2
            if kind == "typo":
                assert "invalid choice" in err and all(repr(k) in err for k in kinds), err
            else:
                assert "applies only with --warmstart-mistakes" in err, err

