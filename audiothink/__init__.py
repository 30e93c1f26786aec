"""audiothink: GRPO on TRL that teaches audio language models when and how to think.

The package holds its hydra configs (``audiothink/configs``) and its built-in rewards (``audiothink.rewards``); in a
source checkout both are the repository's top-level ``configs/`` and ``rewards/`` folders, linked into the package.
"""

from pathlib import Path

# The hydra config tree every entry point composes from (train.yaml, evaluate.yaml, sft.yaml and the groups).
# The entry points hand it to hydra.main as an absolute path: a relative config_path is read as a Python package
# (pkg://audiothink.configs, which it is not: a folder of YAML) when main() is called after an import, not run as
# __main__.
CONFIG_DIR = Path(__file__).parent / "configs"
