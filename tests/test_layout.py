"""The tests mirror the package: a module's tests are found by its name, and no test imports from conftest.py.

The rule, for a module of the package (the repository's rewards/ is the package's audiothink.rewards):

- ``audiothink/<dir>/<name>.py``: ``tests/<dir>/test_<name>.py``, or ``tests/<dir>/test_<name>_<aspect>.py`` when
  one file would hold several subjects (``tests/test_data_paths.py``), or the same names under ``tests/e2e/``
  for a module whose tests are subprocess runs of an entry point (``tests/e2e/test_export.py``).
  ``audiothink/plumbing/validate.py`` -> ``tests/plumbing/test_validate.py``.
- a package's ``__init__.py`` that defines functions or classes: ``tests/<dir>/test_<package>.py``
  (``audiothink/sources/__init__.py`` -> ``tests/sources/test_sources.py``); re-exports need no file.
- ``rewards/<reward>.py``: ``tests/rewards/test_<reward>.py``; ``rewards/__init__.py`` (the contract of the
  built-in rewards): ``tests/rewards/test_rewards.py``.
- a module tested only through others is listed in COVERED_ELSEWHERE with the file that tests it and why.

Tests that are not about one module have their own folders (tests/configs/, tests/bench/) or a plain name
(tests/test_readme.py). Shared plain helpers live in tests/helpers.py and tests/reward_testing.py; conftest.py
holds fixtures only, which pytest hands to the tests itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
PACKAGE = REPO / "audiothink"

# module (path from the repository root) -> (the test file that covers it, why it has no file of its own)
COVERED_ELSEWHERE = {
    "audiothink/plumbing/sampler.py": ("tests/plumbing/test_checkpoints.py",
                                       "the epoch order a resume draws again is tested with the resume it serves"),
    "audiothink/toy/window30.py": ("tests/test_vllm_rollout_config.py",
                                   "the toy's 30 s-window copy exists for vLLM: tested beside the vLLM settings "
                                   "(answers as the toy; the real engine refuses the 1 s toy)"),
    "audiothink/grpo_config.py": ("tests/configs/test_trainer_recipes.py",
                                  "builds TRL's GRPOConfig from the trainer group: tested with the trainer configs it "
                                  "reads (and in tests/configs/test_compose.py, every config binding its target)"),
    "audiothink/loading.py": ("tests/configs/test_model.py",
                              "loads the model group: tested per model config (and in test_models_liger.py, "
                              "test_models_omni.py, test_prompts_limit.py)"),
    "audiothink/plot.py": ("tests/test_reports.py",
                           "the run's charts are tested with the other reports' charts, on matplotlib's artists"),
    "audiothink/benchmarks/unified.py": ("tests/test_inference_stop_ids.py",
                                         "the unified-schema loader (benchmark=toy) is data.load_samples behind "
                                         "the benchmark interface: read by every toy evaluation "
                                         "(tests/test_evaluate*.py, test_inference_stop_ids.py)"),
    "audiothink/plumbing/progress.py": ("tests/plumbing/test_console.py",
                                        "the console's progress line, apart only for its transformers import: "
                                        "tested with the console it prints to (and in tests/plumbing/test_health.py)"),
    "audiothink/plumbing/errors.py": ("tests/plumbing/test_validate.py",
                                      "the user-error types only: each is tested where it is raised"),
    "audiothink/toy/model.py": ("tests/test_sft.py",
                                "builds the toy checkpoint the warm start trains (tests/toy/test_warmstart.py checks "
                                "the committed one); every test that loads the toy model runs it"),
    "audiothink/toy/omni.py": ("tests/test_models_omni.py",
                               "builds the tiny Qwen2.5-Omni thinker (the omni_dir fixture) the Omni path is "
                               "tested on"),
}


def _modules() -> list[Path]:
    """Every module of the package, the rewards once (rewards/, not through the audiothink/rewards link)."""
    found = [p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts
             and not (PACKAGE / p.relative_to(PACKAGE).parts[0]).is_symlink()]  # audiothink/rewards -> ../rewards
    found += [p for p in (REPO / "rewards").glob("*.py")]
    return sorted(found)


def _defines_code(path: Path) -> bool:
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
               for n in ast.parse(path.read_text()).body)


def _test_files(module: Path) -> list[Path]:
    """The test files the rule names for ``module`` (empty when none exists)."""
    rel = module.relative_to(REPO)
    if rel.parts[0] == "rewards":
        folder, name = TESTS / "rewards", "rewards" if rel.stem == "__init__" else rel.stem
        candidates = [folder]
    else:
        inner = module.relative_to(PACKAGE)
        if inner.stem == "__init__":
            if not _defines_code(module) or inner.parent == Path("."):
                return [module]  # re-exports only (or the package's own marker): nothing to test by name
            folder, name = TESTS / inner.parent, inner.parent.name
            candidates = [folder]
        else:
            folder, name = TESTS / inner.parent, inner.stem
            candidates = [folder, TESTS / "e2e"]
    return sorted(p for c in candidates for p in c.glob(f"test_{name}*.py")
                  if p.stem == f"test_{name}" or p.stem.startswith(f"test_{name}_"))


def test_every_module_has_a_test_file_named_for_it():
    missing = []
    for module in _modules():
        rel = module.relative_to(REPO).as_posix()
        if not _test_files(module) and rel not in COVERED_ELSEWHERE:
            missing.append(rel)
    assert not missing, ("modules without a test file named for them (tests/<dir>/test_<name>[_<aspect>].py), "
                         f"and not in COVERED_ELSEWHERE: {missing}")


def test_the_covered_elsewhere_list_names_real_files_and_only_modules_without_their_own():
    for module, (test_file, reason) in COVERED_ELSEWHERE.items():
        assert (REPO / module).is_file(), f"COVERED_ELSEWHERE names {module}, which does not exist"
        assert (REPO / test_file).is_file(), f"COVERED_ELSEWHERE: {module}'s tests {test_file} do not exist"
        assert reason, module
        own = _test_files(REPO / module)
        assert not own, f"{module} has {[p.relative_to(REPO).as_posix() for p in own]}: remove it from COVERED_ELSEWHERE"


def _imported_modules(path: Path) -> list[str]:
    """Every module ``path`` imports, by its dotted name (``from tests import conftest`` -> ``tests.conftest``)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    return names


def test_no_test_imports_from_conftest():
    """pytest imports conftest.py itself, under a name of its choosing: importing it again may give a second copy
    of the module, and its helpers are not where a reader looks for them. Plain helpers go in tests/helpers.py."""
    bad = {path.relative_to(REPO).as_posix(): names for path in sorted(TESTS.rglob("*.py"))
           if (names := [n for n in _imported_modules(path) if n.split(".")[-1] == "conftest"])}
    assert not bad, f"imports from conftest.py (take the helper from tests/helpers.py): {bad}"


def test_tests_is_a_package_with_every_folder_in_it():
    """tests/ and each folder under it have an __init__.py: test files are then imported as tests.<folder>.<name>,
    so two folders may hold the same file name (tests/toy/test_data.py, tests/test_data.py) and the helpers
    import as tests.helpers from any folder."""
    folders = [TESTS] + [p for p in TESTS.rglob("*") if p.is_dir() and p.name != "__pycache__"
                         and any(p.glob("*.py"))]
    missing = [f.relative_to(REPO).as_posix() for f in folders if not (f / "__init__.py").is_file()]
    assert not missing, f"test folders without an __init__.py: {missing}"
