"""What a researcher sees: the console, train.log, completions.jsonl, TensorBoard, plots, keys, evaluation folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from audiothink.plumbing.cli import GROUPS, check_overrides
from audiothink.plumbing.errors import ConfigError
from audiothink.plumbing.runfiles import summary_lines
from tests.helpers import toy_cache

REPO = Path(__file__).resolve().parents[2]


def _env(tmp_path, **extra):
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", AUDIOTHINK_CACHE=str(toy_cache(tmp_path)),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.update(extra)
    return env


def _cli(module, args, tmp_path, **extra):
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=_env(tmp_path, **extra),
                         capture_output=True, timeout=600)
    # decoded by hand: text=True would turn every carriage return into a newline, hiding progress bars
    out.stdout, out.stderr = out.stdout.decode("utf-8", "replace"), out.stderr.decode("utf-8", "replace")
    return out


RUN_ARGS = ["trainer.max_steps=2", "trainer.per_device_train_batch_size=16", "trainer.logging_steps=1",
            "trainer.save_steps=2", "eval.num_samples=12", "log.completion_prompts=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One short default run through the CLI: what its console and run folder hold."""
    tmp = tmp_path_factory.mktemp("console")
    out = _cli("audiothink.train", [*RUN_ARGS, f"hydra.run.dir={tmp / 'run'}"], tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp, tmp / "run", out


@pytest.mark.e2e
def test_one_compact_line_per_logging_step_and_no_noise(run):
    _, _, out = run
    lines = out.stdout.splitlines()
    steps = [ln for ln in lines if ln.startswith("step ")]
    assert [ln.split(" |")[0] for ln in steps] == ["step 1/2", "step 2/2"]
    for part in ("reward ", "adaptive_think ", "format ", "think ", "accuracy ", "entropy ", "clipped ",
                 " s/step", "ETA "):
        assert part in steps[-1], (part, steps[-1])
    noise = out.stdout + out.stderr
    assert "{'loss'" not in noise and "'reward':" not in noise  # TRL's printed metrics dict
    assert "\r" not in noise and "\x1b[" not in noise  # progress-bar control codes
    assert "pin_memory" not in noise and "is_gradient_checkpointing" not in noise  # known-harmless warnings


@pytest.mark.e2e
def test_summary_json_holds_figures_only(run):
    """No path and no time in summary.json: two runs with the same seed write identical files."""
    _, run_dir, _ = run
    assert set(json.loads((run_dir / "summary.json").read_text())) == {"steps", "before", "after"}


@pytest.mark.e2e
def test_the_final_table_has_the_task_rows(run):
    _, run_dir, out = run
    summary = json.loads((run_dir / "summary.json").read_text())
    for task in summary["after"]["by_task"]:
        assert any(ln.startswith(f"task {task} ") for ln in out.stdout.splitlines()), task
    for d in summary["after"]["by_difficulty"]:
        assert any(ln.startswith(f"{d} ") for ln in out.stdout.splitlines()), d


@pytest.mark.e2e
def test_no_model_card_in_the_run_folder(run):
    """TRL's hub-oriented model card would call the local base model "None"; the run folder has none."""
    _, run_dir, _ = run
    assert any(run_dir.glob("checkpoint-*")) and not (run_dir / "README.md").exists()


@pytest.mark.e2e
def test_train_log_holds_what_the_console_showed(run):
    _, run_dir, out = run
    log = (run_dir / "train.log").read_text()
    assert "\r" not in log and "\x1b" not in log
    shown = [ln for ln in out.stdout.splitlines() if ln.strip()]
    logged = [ln.split("] ", 1)[1] if ln.startswith("[") else ln for ln in log.splitlines() if ln.strip()]
    missing = [ln for ln in shown if ln not in logged]
    assert not missing, missing
    assert len(logged) >= 15


@pytest.mark.e2e
def test_completions_jsonl_has_whole_prompts_and_agrees_with_metrics(run):
    _, run_dir, _ = run
    records = [json.loads(x) for x in (run_dir / "completions.jsonl").read_text().splitlines()]
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    metric_steps = sorted({m["step"] for m in metrics if "reward" in m})
    assert sorted({r["step"] for r in records}) == metric_steps == [1, 2]
    assert len(records) == 4  # 2 prompts x 2 logging steps
    for r in records:
        assert {"id", "question", "choices", "answer", "difficulty", "task", "completions"} <= set(r)
        assert r["answer"] in r["choices"] and r["question"]
        assert len(r["completions"]) == 8  # G
        for c in r["completions"]:
            assert set(c) == {"text", "rewards", "reward", "advantage"}
            assert set(c["rewards"]) == {"adaptive_think", "format", "accuracy"}
        # the advantage is the group-normalised reward: it sums to ~0 over the group
        assert abs(sum(c["advantage"] for c in r["completions"])) < 1e-2


@pytest.mark.e2e
def test_heldout_before_and_after_in_tensorboard(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir, _ = run
    summary = json.loads((run_dir / "summary.json").read_text())
    tags, values = set(), {}
    for events in (run_dir / "runs").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            tags.add(tag)
            values.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    for d in summary["after"]["by_difficulty"]:
        assert f"heldout/accuracy/difficulty={d}" in tags
    for t in summary["after"]["by_task"]:
        assert f"heldout/think_rate/task={t}" in tags
    got = sorted(values["heldout/accuracy/overall"])
    assert [s for s, _ in got] == [0, 2]
    assert [v for _, v in got] == pytest.approx([summary["before"]["overall"]["accuracy"],
                                                 summary["after"]["overall"]["accuracy"]])
    assert "train/reward" in tags  # next to the training curves


@pytest.mark.e2e
def test_how_it_thinks_reaches_the_console_metrics_and_tensorboard(run):
    """The toy's consistency and chain validity (audiothink.think_metrics.chain_metrics) of every logging step: in
    metrics.jsonl, in TensorBoard next to think/rate, and on the console line."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir, out = run
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "reward" in m]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("step ")]
    assert len(steps) == len(lines) == 2
    for m, line in zip(steps, lines):
        for key in ("think/inconsistent_share", "think/invalid_chain_share"):
            assert 0.0 <= m[key] <= 1.0
        assert (f"think {100 * m['think/rate']:.1f}% (inconsistent {100 * m['think/inconsistent_share']:.1f}%, "
                f"invalid {100 * m['think/invalid_chain_share']:.1f}%)") in line, line
    tags = set()
    for events in (run_dir / "runs").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"train/think/inconsistent_share", "train/think/invalid_chain_share"} <= tags


def test_the_progress_line_shows_how_it_thinks_only_when_measured():
    from audiothink.plumbing.progress import ProgressLine

    logs = {"reward": 1.0, "think/rate": 0.5}
    assert "| think 50.0% |" in ProgressLine().line(3, 10, logs)  # not the toy: no chain figures
    shown = ProgressLine().line(3, 10, {**logs, "think/inconsistent_share": 0.125, "think/invalid_chain_share": 0.25})
    assert "| think 50.0% (inconsistent 12.5%, invalid 25.0%) |" in shown


@pytest.mark.e2e
def test_plots_are_written(run):
    _, run_dir, _ = run
    for name in ("training.png", "heldout.png"):
        assert (run_dir / name).stat().st_size > 20_000, name
    (run_dir / "training.png").unlink()
    out = subprocess.run([sys.executable, "-m", "audiothink.plot", str(run_dir)], capture_output=True, text=True,
                         env=_env(run_dir), timeout=120)
    assert out.returncode == 0 and (run_dir / "training.png").is_file(), out.stderr
    bad = subprocess.run([sys.executable, "-m", "audiothink.plot", str(run_dir / "nope")], capture_output=True,
                         text=True, env=_env(run_dir), timeout=120)
    assert bad.returncode == 2 and "no metrics.jsonl" in bad.stderr


@pytest.mark.e2e
def test_a_resume_of_a_finished_run_trains_nothing_and_keeps_the_first_config(run):
    tmp, run_dir, _ = run
    first_config = (run_dir / "config.yaml").read_text()
    first_hydra = (run_dir / ".hydra" / "overrides.yaml").read_text()
    metrics_before = (run_dir / "metrics.jsonl").read_text()
    out = _cli("audiothink.train", [*RUN_ARGS, f"hydra.run.dir={run_dir}", "resume=true"], tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "run complete: checkpoint-2 is at step 2 of trainer.max_steps=2; nothing to train" in out.stdout
    assert "scoring 12 items with the starting weights" not in out.stdout  # the recorded 'before' is reused
    assert (run_dir / "metrics.jsonl").read_text() == metrics_before  # no extra step
    assert (run_dir / "config.yaml").read_text() == first_config
    assert (run_dir / "config.resumed-2.yaml").is_file()
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == first_hydra  # hydra's record of the first start
    (resumed_record,) = (run_dir / ".hydra").glob("resumed-*/overrides.yaml")
    assert "resume=true" in resumed_record.read_text()
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 2


# --------------------------------------------------------------------------- keys and --help


@pytest.mark.parametrize("overrides, message", [
    (["+eval.num_sample=8"], "unknown key eval.num_sample (did you mean eval.num_samples?)"),
    (["eval.num_sample=8"], "unknown key eval.num_sample (did you mean eval.num_samples?)"),
    (["trainer.lerning_rate=1e-4"], "unknown key trainer.lerning_rate (did you mean trainer.learning_rate?)"),
    (["+trainer.save_stratgy=no"], "not a field of TRL's GRPOConfig (did you mean trainer.save_strategy"),
    (["model=toyy"], "model=toyy: no such option; model is one of"),
    (["model=qwen2_audio_7b", "model.lora.rr=3"], "unknown key model.lora.rr (did you mean model.lora.r?)"),
    (["model.lora.r=4"], "model.lora is null"),
    (["+data.max_prompt_tokenz=10"], "did you mean data.max_prompt_tokens?"),
])
def test_unknown_keys_and_options_are_errors(overrides, message):
    with pytest.raises(ConfigError) as info:
        check_overrides("train", overrides)
    assert message in str(info.value)


@pytest.mark.parametrize("overrides", [
    ["+reward.brevity.weight=0.2", "+reward.brevity.fn._target_=my.brevity"],
    ["+trainer.save_strategy=no"], ["~reward.format"], ["model=toy_lora", "model.lora.r=4"],
    ["hydra.run.dir=/tmp/x"], ["reward=full", "judge=openai", "judge.base_url=http://x/v1"],
    ["data=jsonl", "data.train=/d/train.jsonl"],  # a mandatory (???) key is a key
])
def test_known_keys_pass(overrides):
    check_overrides("train", overrides)


def test_evaluate_keys_are_checked_too():
    with pytest.raises(ConfigError, match="did you mean eval.max_new_tokens"):
        check_overrides("evaluate", ["eval.max_new_token=8"])
    with pytest.raises(ConfigError, match="benchmark=mmau: no such option"):
        check_overrides("evaluate", ["benchmark=mmau"])


@pytest.mark.e2e
def test_cli_unknown_key_exits_2(tmp_path):
    out = _cli("audiothink.train", ["+eval.num_sample=8"], tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: unknown key eval.num_sample (did you mean eval.num_samples?); '+' adds keys only under reward.* "
        "(a new reward), trainer.* (a GRPOConfig field) and hydra.*"]


@pytest.mark.e2e
@pytest.mark.parametrize("entry", ["train", "evaluate", "sft", "curate"])
def test_help_lists_the_groups_of_the_entry_point(entry, tmp_path):
    out = _cli(f"audiothink.{entry}", ["--help"], tmp_path)
    assert out.returncode == 0
    listed = {}
    section = out.stdout.split("== Config groups (group=option) ==")[1].split("==")[0]
    for line in section.strip().splitlines():
        group, options = line.split(":", 1)
        listed[group] = {o.strip() for o in options.split("(")[0].split(",")}
    shown = set(GROUPS[entry]) - ({"trainer"} if entry in ("evaluate", "sft", "curate") else set())
    assert set(listed) == shown
    for group, options in listed.items():
        assert options == {p.stem for p in (REPO / "configs" / group).glob("*.yaml")}, group
    assert "accelerate" not in section and ("data" not in section if entry == "evaluate" else "benchmark" not in section)


# --------------------------------------------------------------------------- evaluation outputs


@pytest.mark.e2e
def test_evaluation_says_what_was_evaluated_and_leaves_no_empty_folder(run):
    tmp, run_dir, _ = run
    out = _cli("audiothink.evaluate", [f"model.path={run_dir / 'final'}", "eval.limit=4", "eval.max_new_tokens=16",
                                       "eval.charts=false"], tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    # redirected output: no progress-bar carriage returns, no loading bars
    assert "\r" not in out.stdout + out.stderr and "Loading weights" not in out.stdout + out.stderr
    folders = list((tmp / "runs" / "eval" / "toy").iterdir())
    assert len(folders) == 1 and folders[0].name.endswith("_run-final"), folders
    results = json.loads((folders[0] / "results.json").read_text())
    assert results["model"]["name"] == "run-final"
    assert "fully fine-tuned" in results["model"]["description"]
    report = (folders[0] / "report.md").read_text()
    assert report.startswith("# toy (toy-v") and "run-final" in report.splitlines()[0]
    assert "(base model)" not in report and "fully fine-tuned" in report
    failed = _cli("audiothink.evaluate", ["eval.limit=4", "eval.kl_micro_batch=0"], tmp)
    assert failed.returncode == 2
    assert list((tmp / "runs" / "eval" / "toy").iterdir()) == folders  # the failed one left nothing


def test_tiny_kl_keeps_its_digits(capsys):
    from audiothink.evaluate import _print

    results = {"benchmark": {"name": "toy", "version": "v", "items": 1, "limited_to": None},
               "model": {"description": "m"}, "lines": [],
               "summary": {"overall": {"think_rate": 0.0, "mean_think_tokens": None, "format_failure_rate": 0.0,
                                       "failures": 0}},
               "listen_check": None, "forced_modes": None, "forgetting": {"kl_per_token": 9.7e-7, "tokens": 10},
               "run": {"predicted": 1, "items_per_s": 1.0, "resumed": 0}, "submission": "s"}
    _print(results)
    assert "KL(tuned || base) 9.7e-07 nats/token" in capsys.readouterr().out


# --------------------------------------------------------------------------- W&B, the LoRA example


@pytest.mark.e2e
def test_wandb_offline_through_the_config(tmp_path):
    pytest.importorskip("wandb")
    out = _cli("audiothink.train", ["trainer.max_steps=1", "trainer.per_device_train_batch_size=16",
                                    "trainer.logging_steps=1", "trainer.report_to=[wandb]", "eval.num_samples=0",
                                    f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, WANDB_MODE="offline")
    assert out.returncode == 0, out.stderr[-3000:]
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    data = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))
    assert b"rewards/adaptive_think/mean" in data and b"run" in data


def test_summary_lines_have_every_slice():
    stats = {"n": 2, "accuracy": 0.5, "think_rate": 0.0}
    result = {"overall": stats, "by_difficulty": {"easy": stats, "hard": stats}, "by_task": {"count": stats}}
    lines = summary_lines({"run_dir": "r", "steps": 3, "before": result, "after": result})
    assert [ln.split()[0] for ln in lines[2:]] == ["overall", "easy", "hard", "task"]


def test_model_names_in_titles_and_folders():
    from audiothink.evaluate import model_tag
    from audiothink.plot import model_name
    from audiothink.toy import TOY_MODEL_DIR

    assert model_name(str(TOY_MODEL_DIR)) == "toy-warmstart"  # not "assets/model"
    assert model_tag(str(TOY_MODEL_DIR)) == "toy-warmstart"
    assert model_name("runs/x/final") == "x/final" and model_name("/models/Qwen2-Audio-7B-Instruct") == \
        "Qwen2-Audio-7B-Instruct"
    assert model_tag("/models/Qwen2-Audio-7B-Instruct", "runs/2026-11-30_10-00-00/final") == \
        "Qwen2-Audio-7B-Instruct+2026-11-30_10-00-00-final"
