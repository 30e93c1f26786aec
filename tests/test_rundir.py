"""Run folders are never shared by accident: unique default names, named folders of other runs refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from audiothink.errors import ConfigError
from audiothink.rundir import MARKER, claim, claim_unique, previous_run

REPO = Path(__file__).resolve().parent.parent


def _env(tmp_path):
    return dict(os.environ, TOKENIZERS_PARALLELISM="false", AUDIOTHINK_CACHE=str(tmp_path / "cache"),
                PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))


def _train(args, cwd, tmp_path, timeout=300):
    return subprocess.run([sys.executable, "-m", "audiothink.train", *args], cwd=cwd, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)


def test_processes_racing_for_one_name_get_different_folders(tmp_path):
    base = tmp_path / "runs" / "2026-01-01_00-00-00"
    code = "import sys; from audiothink.rundir import claim_unique; print(claim_unique(sys.argv[1]))"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(base)], env=_env(tmp_path), stdout=subprocess.PIPE,
                              text=True) for _ in range(4)]
    folders = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(folders)) == 4, folders
    assert {Path(f).name for f in folders} == {base.name, f"{base.name}_2", f"{base.name}_3", f"{base.name}_4"}
    for f in folders:
        assert (Path(f) / MARKER).is_file()


def test_one_process_claims_its_folder_once(tmp_path):
    base = tmp_path / "r"
    assert claim_unique(base) == base
    assert claim_unique(base) == base  # idempotent within a launch
    assert claim(base, resume=False) == base  # and claim() accepts this launch's own folder


def test_a_run_started_in_a_taken_second_gets_a_suffix(tmp_path):
    """Two runs in the same second, no hydra.run.dir: the second takes runs/<time>_2, not the first's folder."""
    now = datetime.now()
    for s in range(-2, 30):  # every name the launch can resolve to is taken by another run
        taken = tmp_path / "runs" / (now + timedelta(seconds=s)).strftime("%Y-%m-%d_%H-%M-%S")
        taken.mkdir(parents=True)
        (taken / "config.yaml").write_text("another run\n")
    out = _train(["trainer.max_steps=1", "trainer.per_device_train_batch_size=16", "trainer.max_completion_length=8",
                  "trainer.report_to=[]", "eval.num_samples=0", "+trainer.save_strategy=no"], tmp_path, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    suffixed = sorted(p for p in (tmp_path / "runs").iterdir() if p.name.endswith("_2"))
    assert len(suffixed) == 1 and (suffixed[0] / "final").is_dir() and (suffixed[0] / "summary.json").is_file()
    others = [p for p in (tmp_path / "runs").iterdir() if not p.name.endswith("_2")]
    assert all(sorted(x.name for x in p.iterdir()) == ["config.yaml"] for p in others)
    assert all((p / "config.yaml").read_text() == "another run\n" for p in others)


def test_a_named_folder_holding_a_run_is_refused_and_left_untouched(tmp_path):
    run = tmp_path / "exp1"
    (run / "checkpoint-50").mkdir(parents=True)
    (run / "config.yaml").write_text("first run\n")
    (run / "metrics.jsonl").write_text('{"step": 50}\n')
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    t0 = time.time()
    out = _train([f"hydra.run.dir={run}"], tmp_path, tmp_path)
    assert out.returncode == 2
    err = out.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: run folder"), err
    assert "resume=true" in err and "hydra.run.dir" in err and "checkpoint-50" in err
    assert time.time() - t0 < 30
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # no .hydra/, no log, nothing rewritten
    assert (run / "config.yaml").read_text() == "first run\n"


def test_resume_without_a_checkpoint_stops_before_loading(tmp_path):
    run = tmp_path / "exp2"
    out = _train([f"hydra.run.dir={run}", "resume=true"], tmp_path, tmp_path)
    assert out.returncode == 2
    assert "resume=true: no complete checkpoint" in out.stderr and "Traceback" not in out.stderr
    out = _train([f"hydra.run.dir={run}", f"resume={tmp_path / 'nowhere'}"], tmp_path, tmp_path)
    assert out.returncode == 2 and "no such checkpoint folder" in out.stderr


def test_claim_rules(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert claim(empty, resume=False) == empty  # an empty folder is free
    hydra_only = tmp_path / "hydra_only"
    (hydra_only / ".hydra").mkdir(parents=True)
    (hydra_only / "train.log").write_text("")
    assert previous_run(hydra_only) == []  # what hydra writes for a run that stopped at once is no run
    used = tmp_path / "used"
    used.mkdir()
    (used / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"already holds a run \(summary\.json\)"):
        claim(used, resume=False)
    assert claim(used, resume=True) == used
    marker = json.loads((used / MARKER).read_text())
    assert marker["launch"].startswith("process:")


def test_evaluation_reuses_a_named_folder_and_suffixes_the_default(tmp_path):
    """Evaluation: rerunning into a named folder resumes it (by design); default names never collide."""
    from audiothink.rundir import RunDirCallback
    from omegaconf import OmegaConf

    cb = RunDirCallback(refuse_existing=False)
    named = tmp_path / "eval1"
    named.mkdir()
    (named / "predictions.jsonl").write_text("{}\n")
    cfg = OmegaConf.create({"hydra": {"run": {"dir": str(named)}, "overrides": {"hydra": [f"hydra.run.dir={named}"],
                                                                                "task": []}}})
    cb.on_run_start(cfg)
    assert cfg.hydra.run.dir == str(named)
    default = tmp_path / "runs" / "eval" / "toy" / "t"
    default.mkdir(parents=True)
    (default / "results.json").write_text("{}")
    cfg = OmegaConf.create({"hydra": {"run": {"dir": str(default)}, "overrides": {"hydra": [], "task": []}}})
    cb.on_run_start(cfg)
    assert cfg.hydra.run.dir == str(default) + "_2"
