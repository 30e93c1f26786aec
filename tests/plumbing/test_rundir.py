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

from audiothink.plumbing.errors import ConfigError
from audiothink.plumbing.rundir import MARKER, claim, claim_unique, previous_run
from tests.helpers import toy_cache

REPO = Path(__file__).resolve().parents[2]


def _env(tmp_path):
    return dict(os.environ, TOKENIZERS_PARALLELISM="false", AUDIOTHINK_CACHE=str(toy_cache(tmp_path)),
                PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))


def _train(args, cwd, tmp_path, timeout=300):
    return subprocess.run([sys.executable, "-m", "audiothink.train", *args], cwd=cwd, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)


def test_processes_racing_for_one_name_get_different_folders(tmp_path):
    base = tmp_path / "runs" / "2026-01-01_00-00-00"
    code = "import sys; from audiothink.plumbing.rundir import claim_unique; print(claim_unique(sys.argv[1]))"
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


@pytest.mark.e2e
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


@pytest.mark.e2e
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


@pytest.mark.e2e
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
    from audiothink.plumbing.rundir import RunDirCallback
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


# --- one folder, one live process (issue 17) ---------------------------------------------------------------

# Another process that claims a folder the way a training run does (audiothink.plumbing.rundir.claim), says so, and lives
# until it is killed: the holder of a live run.
_HOLDER = ("import sys, time; from audiothink.plumbing.rundir import claim; claim(sys.argv[1], resume=True); "
           "print('held', flush=True); time.sleep(600)")


def _hold_in_another_process(folder, tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)], env=_env(tmp_path), stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _snapshot(folder):
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


def _a_run(folder):
    (folder / "checkpoint-2").mkdir(parents=True)
    (folder / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (folder / "config.yaml").write_text("first run\n")
    (folder / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')


def test_a_live_run_holds_its_folder_and_a_killed_one_does_not(tmp_path):
    """A resume (or a new run) on a live run's folder is refused, naming the holder, and touches nothing; once the
    holder is gone (kill -9: no clean-up ran), its stale marker blocks nothing."""
    import signal

    run = tmp_path / "exp"
    _a_run(run)
    holder = _hold_in_another_process(run, tmp_path)
    try:
        before = _snapshot(run)
        for resume in (True, False):
            with pytest.raises(ConfigError, match=rf"run folder {run} is in use by a running process "
                                                  rf"\(pid {holder.pid} on "):
                claim(run, resume=resume)
        assert _snapshot(run) == before
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    assert json.loads((run / MARKER).read_text())["pid"] == holder.pid  # the dead holder's marker is still there
    assert claim(run, resume=True) == run
    assert json.loads((run / MARKER).read_text())["pid"] == os.getpid()


@pytest.mark.e2e
def test_a_resume_beside_a_live_run_stops_at_once_and_leaves_it_alone(tmp_path):
    """`resume=true` on the folder of a run that is still training: one line naming the holder, exit 2, in
    seconds, and not a file of the live run touched (no .hydra/resumed-…, no log, no config)."""
    run = tmp_path / "exp"
    _a_run(run)
    holder = _hold_in_another_process(run, tmp_path)
    try:
        before = _snapshot(run)
        t0 = time.time()
        out = _train([f"hydra.run.dir={run}", "resume=true"], tmp_path, tmp_path)
        assert time.time() - t0 < 60
        assert out.returncode == 2, out.stderr[-3000:]
        err = out.stderr.strip()
        assert len(err.splitlines()) == 1, err
        assert err.startswith(f"error: run folder {run} is in use by a running process (pid {holder.pid} on "), err
        assert _snapshot(run) == before
    finally:
        holder.kill()
        holder.wait(timeout=30)


def _hydra_config(folder, resume=False):
    from omegaconf import OmegaConf

    return OmegaConf.create({
        "resume": resume, "output_dir": str(folder),
        "hydra": {"run": {"dir": str(folder)}, "output_subdir": ".hydra", "job": {"name": "train"},
                  "job_logging": {"handlers": {"file": {"filename": "x"}}},
                  "overrides": {"hydra": [f"hydra.run.dir={folder}"], "task": []}}})


# Another new run on the same folder, as far as the run folder goes: the callback (before hydra writes), then
# train()'s config.yaml, train()'s claim, and main()'s clean-up on a refusal; it prints its exit status.
_SECOND_RUN = """
import sys
from pathlib import Path
from audiothink.plumbing.errors import ConfigError
from audiothink.plumbing.rundir import RunDirCallback, claim, remove_if_unused
from tests.plumbing.test_rundir import _hydra_config
folder = Path(sys.argv[1])
try:
    RunDirCallback().on_run_start(_hydra_config(folder))
    if sys.argv[3:] == ["wait"]:  # let the test interleave: claimed, waits for a line on stdin
        print("claimed", flush=True)
        sys.stdin.readline()
    else:  # hydra writes its record and train() starts: a second or more before config.yaml
        __import__("time").sleep(1)
    (folder / "config.yaml").write_text("run %s\\n" % sys.argv[2])
    claim(folder, resume=False)
except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    remove_if_unused(folder, ("checkpoint-*", "metrics.jsonl", "final"))
    sys.exit(2)
"""


def test_a_refused_new_run_never_removes_the_folder_of_the_run_that_holds_it(tmp_path):
    """Two new runs name one folder at the same moment (the race of issue 17, in a fixed order): this process
    claims it first (the callback); the other's callback comes next, before this run wrote its config.yaml. It
    is refused at once, writes nothing and removes nothing; this run's second claim (train()) still holds it."""
    from audiothink.plumbing.rundir import RunDirCallback, remove_if_unused

    run = tmp_path / "exp"
    RunDirCallback().on_run_start(_hydra_config(run))  # this run: made and holds the folder
    other = subprocess.Popen([sys.executable, "-c", _SECOND_RUN, str(run), "B", "wait"], env=_env(tmp_path),
                             cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    said = other.stdout.readline().strip()  # "claimed" if its callback took the folder; nothing if refused
    (run / "config.yaml").write_text("run A\n")  # this run's train() writes its config
    err = other.communicate("go\n", timeout=60)[1]
    assert said == "" and other.returncode == 2, f"the second run took a live run's folder: {said!r}, {err}"
    assert err.strip() == (f"error: run folder {run} is in use by a running process (pid {os.getpid()} on "
                           f"{__import__('socket').gethostname()}): one folder takes one run at a time; wait "
                           "for it to end (or stop it), or start a new run elsewhere (another hydra.run.dir=…)")
    assert claim(run, resume=False) == run  # train()'s claim: still this run's
    assert (run / "config.yaml").read_text() == "run A\n"
    assert json.loads((run / MARKER).read_text())["pid"] == os.getpid()
    assert remove_if_unused(run, ("checkpoint-*",))  # and this run may remove its own stub
    assert not run.exists()


def test_a_run_that_made_the_folder_but_lost_it_removes_nothing(tmp_path, monkeypatch):
    """The other order: this process makes the folder, another claims it before this one locks it. This run is
    refused, and its clean-up leaves the other's folder and files alone (it made the folder, but never held it)."""
    from audiothink.plumbing import rundir

    run = tmp_path / "exp"
    holders = []
    real_make = rundir._make

    def make_then_lose(folder):
        made = real_make(folder)
        holders.append(_hold_in_another_process(folder, tmp_path))  # claims the folder this process just made
        (folder / "config.yaml").write_text("the other run\n")
        return made

    monkeypatch.setattr(rundir, "_make", make_then_lose)
    try:
        with pytest.raises(SystemExit) as stop:
            rundir.RunDirCallback().on_run_start(_hydra_config(run))
        assert stop.value.code == 2
        assert str(run.resolve()) in rundir.CREATED  # made here ...
        assert not rundir.remove_if_unused(run, ())  # ... but held by the other: never removed
        assert (run / "config.yaml").read_text() == "the other run\n"
        assert json.loads((run / MARKER).read_text())["pid"] == holders[0].pid
    finally:
        for h in holders:
            h.kill()
            h.wait(timeout=30)


def test_two_new_runs_started_at_once_on_one_folder(tmp_path):
    """The real race, a few times: two processes start a new run on one folder together. One holds it, the other
    is refused, and the folder keeps the winner's config.yaml and marker."""
    for attempt in range(3):
        run = tmp_path / f"exp{attempt}"
        procs = [subprocess.Popen([sys.executable, "-c", _SECOND_RUN + "import time; time.sleep(1)", str(run), name],
                                  env=_env(tmp_path), cwd=REPO, stderr=subprocess.PIPE, text=True)
                 for name in ("A", "B")]
        errs = [p.communicate(timeout=60)[1] for p in procs]
        codes = sorted(p.returncode for p in procs)
        assert codes == [0, 2], (codes, errs)
        winner = next(p for p in procs if p.returncode == 0)
        assert run.is_dir(), f"attempt {attempt}: the refused run removed the winner's folder; {errs}"
        name = "A" if winner is procs[0] else "B"
        assert (run / "config.yaml").read_text() == f"run {name}\n", f"attempt {attempt}: the refused run wrote"
        assert json.loads((run / MARKER).read_text()).get("pid") == winner.pid, errs
        assert "is in use by a running process" in next(e for e in errs if e.strip())


@pytest.mark.e2e
def test_a_user_folder_is_never_removed_on_a_user_error(tmp_path):
    """A folder the user made (holding only notes.txt) and `resume=true` without a checkpoint: the run stops on
    the user error and the folder and notes stay (the run did not make the folder)."""
    run = tmp_path / "mine"
    run.mkdir()
    (run / "notes.txt").write_text("my notes\n")
    out = _train([f"hydra.run.dir={run}", "resume=true"], tmp_path, tmp_path)
    assert out.returncode == 2 and "resume=true: no complete checkpoint" in out.stderr, out.stderr[-2000:]
    assert (run / "notes.txt").read_text() == "my notes\n"


def test_a_user_folder_is_never_removed_by_the_callback(tmp_path):
    from audiothink.plumbing.rundir import RunDirCallback, remove_if_unused

    run = tmp_path / "mine"
    run.mkdir()
    (run / "notes.txt").write_text("my notes\n")
    with pytest.raises(SystemExit) as stop:  # no resume: refused, the folder as it was
        RunDirCallback().on_run_start(_hydra_config(run))
    assert stop.value.code == 2 and sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    RunDirCallback().on_run_start(_hydra_config(run, resume=True))  # resume: accepted and held ...
    assert not remove_if_unused(run, ("checkpoint-*", "metrics.jsonl", "final"))  # ... but not this run's to remove
    assert (run / "notes.txt").read_text() == "my notes\n"


def _launch_env(monkeypatch, rank):
    for k, v in {"WORLD_SIZE": "2", "RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
                 "TORCHELASTIC_RUN_ID": "none"}.items():
        monkeypatch.setenv(k, v)


@pytest.mark.parametrize("how", ["named", "default"])
def test_a_stale_marker_of_an_earlier_launch_is_not_this_launchs(tmp_path, monkeypatch, how):
    """A launch key repeats (same address, port and rendezvous id another day): a non-main process must not take a
    folder whose marker an earlier launch wrote, only one written by this launch's main process."""
    from audiothink.plumbing import rundir

    _launch_env(monkeypatch, rank=1)
    monkeypatch.setattr(rundir, "_WAIT_S", 0.5)
    folder = tmp_path / "2026-01-01_00-00-00"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text('{"step": 1}\n')
    stale = {"launch": rundir.launch_key(), "written": rundir._process_start() - 3600}
    (folder / MARKER).write_text(json.dumps(stale))
    take = (lambda: claim(folder, resume=False)) if how == "named" else (lambda: claim_unique(folder))
    with pytest.raises(ConfigError, match="main process of this launch"):
        take()
    (folder / MARKER).write_text(json.dumps(stale | {"written": time.time()}))  # this launch's main process
    assert take() == folder


# --- file-system faults: one line naming the path, exit 2, before any work ------------------------------------

def test_a_run_folder_that_cannot_be_made_is_one_line(tmp_path, monkeypatch):
    import errno

    from audiothink.plumbing import rundir

    (tmp_path / "afile").write_text("x")
    cases = {
        tmp_path / "afile": f"run folder {tmp_path / 'afile'}: {tmp_path / 'afile'} is a file, not a folder",
        tmp_path / "afile" / "run": f"run folder {tmp_path / 'afile' / 'run'}: {tmp_path / 'afile'} is a file, not a folder",
        tmp_path / ("x" * 300): "[Errno 36] File name too long (a name in the path is longer than the file system allows)",
    }
    for folder, message in cases.items():
        with pytest.raises(ConfigError) as e:
            claim(folder, resume=False)
        assert message in str(e.value) and "hydra.run.dir" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"run folder .*afile.*: .*afile is a file, not a folder"):
        claim_unique(tmp_path / "afile" / "2026-01-01_00-00-00")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]

    # a read-only file system (root ignores chmod, so the OS's answer is simulated): a new folder, then an
    # existing one (resume=true) whose marker cannot be written
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(args[0]))

    with monkeypatch.context() as m:
        m.setattr(Path, "mkdir", read_only)
        with pytest.raises(ConfigError, match=rf"run folder {tmp_path / 'ro'}: cannot be created or written: "
                                              r"\[Errno 30\] Read-only file system"):
            claim(tmp_path / "ro", resume=False)
        with pytest.raises(ConfigError, match=r"\[Errno 30\] Read-only file system"):
            claim_unique(tmp_path / "runs" / "t")
    existing = tmp_path / "existing"
    existing.mkdir()
    with monkeypatch.context() as m:
        m.setattr(rundir.os, "open", read_only)
        with pytest.raises(ConfigError, match=rf"run folder {existing}: cannot be created or written: \[Errno 30\] "
                                              rf"Read-only file system \({existing / MARKER}\)"):
            claim(existing, resume=True)
    assert list(existing.iterdir()) == []


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["file", "parent_file", "long_name", "log_is_folder"])
def test_train_on_a_run_folder_that_cannot_be_written(tmp_path, case):
    """The entry point: one line naming the path, exit 2, in seconds, no traceback, nothing left behind."""
    (tmp_path / "afile").write_text("x")
    folder = {"file": tmp_path / "afile", "parent_file": tmp_path / "afile" / "run",
              "long_name": tmp_path / ("x" * 300), "log_is_folder": tmp_path / "exp"}[case]
    args = [f"hydra.run.dir={folder}"]
    if case == "log_is_folder":  # hydra: "Unable to configure handler 'file'"
        (folder / "train.log").mkdir(parents=True)
        args.append("resume=true")
    t0 = time.time()
    out = _train(args, tmp_path, tmp_path)
    assert time.time() - t0 < 60
    err = out.stderr.strip()
    assert out.returncode == 2 and len(err.splitlines()) == 1, err[-3000:]
    assert err.startswith(f"error: run folder {folder}: ") and "hydra.run.dir" in err, err
    if case == "log_is_folder":
        assert f"{folder / 'train.log'} is a folder, not a file" in err
        assert sorted(p.name for p in folder.iterdir()) == ["train.log"]  # no marker, no .hydra/
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["afile"] + (
        ["exp"] if case == "log_is_folder" else [])


def test_a_full_disk_is_named_not_a_traceback(tmp_path):
    from audiothink.plumbing.rundir import disk_fault
    import errno

    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "metrics.jsonl"))
    assert disk_fault(full, tmp_path) == f"{tmp_path / 'metrics.jsonl'}: [Errno 28] No space left on device"
    assert disk_fault(OSError(errno.ENOSPC, "No space left on device"), tmp_path) == (
        f"writing into {tmp_path}: [Errno 28] No space left on device")
    try:  # a library that wraps the OS error (torch.save's "iostream error") still names it
        try:
            raise full
        except OSError as e:
            raise RuntimeError("basic_ios::clear: iostream error") from e
    except RuntimeError as wrapped:
        assert "No space left on device" in disk_fault(wrapped, tmp_path)
    assert disk_fault(OSError(errno.EIO, "Input/output error"), tmp_path) is None
    assert disk_fault(ValueError("a bug"), tmp_path) is None


# `python -m audiothink.train` in a process where one file of the run is /dev/full: the kernel's own "No space
# left on device" on the real write, as a full disk gives it.
_FULL_DISK = """
import os, runpy, sys
from pathlib import Path
import audiothink.{module} as m
real = m.{function}
def on_a_full_disk(run_dir, *args, **kwargs):
    os.symlink("/dev/full", Path(run_dir) / "{file}")
    return real(run_dir, *args, **kwargs)
m.{function} = on_a_full_disk
sys.argv = ["audiothink.train", *sys.argv[1:]]
runpy.run_module("audiothink.train", run_name="__main__", alter_sys=True)
"""

_TINY = ["trainer.max_steps=1", "trainer.per_device_train_batch_size=16", "trainer.max_completion_length=8",
         "trainer.report_to=[]"]


def _train_on_a_full_disk(args, tmp_path, **where):
    return subprocess.run([sys.executable, "-c", _FULL_DISK.format(**where), *args], cwd=tmp_path,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("function, file", [
    ("write_config", "config.yaml"),  # the run's first file, before anything loads
    pytest.param("save_before", "heldout_before.json", marks=pytest.mark.slow),  # after data, model and scoring
])
def test_a_disk_that_fills_during_the_run_is_one_line(tmp_path, function, file):
    """The disk fills while the run writes its files: one line naming the folder and "No space left on device",
    exit 2, no traceback; nothing was trained, so the stub folder goes."""
    run = tmp_path / "run"
    out = _train_on_a_full_disk([*_TINY, "eval.num_samples=4", f"hydra.run.dir={run}"], tmp_path,
                                module="plumbing.runfiles", function=function, file=file)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: writing into {run}: [Errno 28] No space left on device: free space (or choose another "
                      "disk with hydra.run.dir=…), then start again, or continue from the last checkpoint with "
                      "resume=true"], out.stderr[-3000:]
    assert not run.exists()


@pytest.mark.slow  # a real (1-step) training run: ~70 s on the loaded 2-core machine
def test_a_disk_that_fills_while_plotting_keeps_the_run(tmp_path):
    """The disk fills while the end-of-run plots are written: the run is complete (summary.json), so one warning
    line names the failure and how to draw the plots later, the summary is printed, and the run exits 0."""
    run = tmp_path / "run"
    out = _train_on_a_full_disk([*_TINY, "eval.num_samples=0", "+trainer.save_strategy=no", "log.plots=true",
                                 f"hydra.run.dir={run}"], tmp_path, module="plot", function="plot_run",
                                file="training.png")
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "Traceback" not in text, text[-3000:]
    assert (f"plots: not written: writing into {run}: [Errno 28] No space left on device (draw them later: "
            f"python -m audiothink.plot {run})") in text, text[-3000:]
    assert (run / "summary.json").is_file() and f"run: {run}" in text


def test_a_log_file_on_a_full_disk_says_so_once(tmp_path, capsys):
    """hydra's train.log on a full disk: one line, then the file is left alone (logging would print a traceback
    for every record); the console still gets every line."""
    import logging

    from audiothink.plumbing.rundir import guard_log_files

    os.symlink("/dev/full", tmp_path / "train.log")
    handler = logging.FileHandler(tmp_path / "train.log")
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        guard_log_files()
        for i in range(3):
            logging.getLogger("audiothink.train").warning("step %d", i)
    finally:
        root.removeHandler(handler)
        with __import__("contextlib").suppress(OSError):  # its buffer cannot be written either (logging.shutdown
            handler.close()  # at exit ignores that too)
    err = capsys.readouterr().err
    assert err == (f"warning: {tmp_path / 'train.log'}: [Errno 28] No space left on device; the log file stops "
                   "here\n"), err


def test_without_os_locks_the_holders_pid_and_start_time_decide(tmp_path, monkeypatch):
    """A file system without flock (NFS without lockd, Lustre without -o flock): the marker's holder (host, pid and
    start time, so that a reused pid does not count) decides whether the folder is in use."""
    import errno

    from audiothink.plumbing import rundir

    run = tmp_path / "exp"
    _a_run(run)
    holder = _hold_in_another_process(run, tmp_path)

    class NoLocks:
        LOCK_SH, LOCK_EX, LOCK_NB = 1, 2, 4

        @staticmethod
        def flock(fd, op):
            raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(rundir, "fcntl", NoLocks)
    try:
        with pytest.raises(ConfigError, match=rf"in use by a running process \(pid {holder.pid} on "):
            claim(run, resume=True)
        record = json.loads((run / MARKER).read_text())
        (run / MARKER).write_text(json.dumps(record | {"start": record["start"] - 100}))  # the pid, reused later
        assert claim(run, resume=True) == run
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_removed_stub_takes_the_empty_parents_its_run_made(tmp_path):
    """A run stopped by a user error (evaluate's default runs/eval/<benchmark>/<time>) leaves no empty folders:
    the parents its mkdir made go with it while empty; parents that existed, or that hold another run, stay."""
    from audiothink.plumbing.rundir import claim, claim_unique, remove_if_unused

    run = claim(tmp_path / "runs" / "eval" / "toy" / "t1", resume=False)
    assert remove_if_unused(run, ())
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # runs/, runs/eval/, runs/eval/toy/ went too

    (tmp_path / "keep").mkdir()
    run = claim_unique(str(tmp_path / "keep" / "eval" / "mmar" / "t2"))
    other = claim(tmp_path / "keep" / "eval" / "other", resume=False)  # a run beside it, made later
    assert remove_if_unused(run, ())
    assert not (tmp_path / "keep" / "eval" / "mmar").exists()  # empty: made by the removed run
    assert other.is_dir() and (tmp_path / "keep").is_dir()  # holds a run / existed before
