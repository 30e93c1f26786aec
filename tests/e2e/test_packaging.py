"""The package as a wheel installs it (a user's pip install, a cluster image), not as the source checkout runs it.

The wheel is built from a copy of what it is built from (pyproject.toml, README.md, audiothink/, rewards/,
configs/), without network (--no-build-isolation: the running setuptools), installed with --no-deps into a
folder, and run from an empty folder with only that folder and this venv's site-packages on the path: no source
checkout, no editable install (``python -S`` skips the .pth files that would map the checkout in).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _pip(*args, cwd):
    out = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1"))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the wheel, the folder it is installed in)."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    src.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("audiothink", "rewards", "configs"):  # the package's links to rewards/ and configs/ stay links
        shutil.copytree(REPO / name, src / name, symlinks=True, ignore=skip)
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "wheel"), str(src), cwd=tmp)
    (wheel,) = (tmp / "wheel").glob("audiothink-*.whl")
    _pip("install", "--no-deps", "--target", str(tmp / "site"), str(wheel), cwd=tmp)
    return wheel, tmp / "site"


def _run(site: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m <args>`` with the installed folder and this venv's site-packages as the whole path."""
    paths = sysconfig.get_paths()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HYDRA_"))}
    env.update(PYTHONPATH=os.pathsep.join(dict.fromkeys([str(site), paths["purelib"], paths["platlib"]])),
               AUDIOTHINK_CACHE=str(cwd / "cache"), TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-S", "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_wheel_holds_one_package_with_its_configs_rewards_and_toy_model(installed):
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"audiothink", f"{wheel.name.split('-py3')[0]}.dist-info"}, tops  # no `rewards`, no `configs`
    expected = {f"audiothink/configs/{p.relative_to(REPO / 'configs').as_posix()}"
                for p in (REPO / "configs").rglob("*.yaml")}
    expected |= {f"audiothink/rewards/{p.name}" for p in (REPO / "rewards").glob("*.py")}
    expected |= {f"audiothink/{p.relative_to(REPO / 'audiothink').as_posix()}"
                 for p in (REPO / "audiothink" / "toy" / "assets").rglob("*") if p.is_file()}
    assert expected <= set(names), sorted(expected - set(names))
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["audiothink"]


def test_an_installed_copy_composes_its_own_configs_from_any_folder(installed, tmp_path):
    _, site = installed
    assert not (site / "rewards").exists() and not (site / "configs").exists()
    # a mark only the installed copy has: the configs composed are the installed package's, not the checkout's
    train_yaml = site / "audiothink" / "configs" / "train.yaml"
    assert "\nseed: 0\n" in train_yaml.read_text()
    train_yaml.write_text(train_yaml.read_text().replace("\nseed: 0\n", "\nseed: 4242\n"))
    out = _run(site, ["audiothink.train", "--cfg", "job"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "\nseed: 4242\n" in out.stdout and "loss_type: dapo" in out.stdout
    assert "_target_: audiothink.rewards.AdaptiveThink" in out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # --cfg writes nothing, not even a run folder


def test_an_old_rewards_target_in_an_installed_copy_says_the_new_name(installed, tmp_path):
    """`rewards.Format` (the name before the rewards moved into the package): no such module once installed, and
    the error names the one that is."""
    _, site = installed
    out = _run(site, ["audiothink.train", "reward.format.fn._target_=rewards.Format"], tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.strip().splitlines() == [
        "error: reward.format.fn._target_=rewards.Format: no module named 'rewards' on the Python path (did you "
        "mean audiothink.rewards.Format?)"]
