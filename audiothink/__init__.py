"""audiothink: GRPO on TRL that teaches audio language models when and how to think.

The package holds its hydra configs (``audiothink/configs``) and its built-in rewards (``audiothink.rewards``); in a
source checkout both are the repository's top-level ``configs/`` and ``rewards/`` folders, linked into the package.
"""

from pathlib import Path

# The hydra config tree every entry point composes from (train.yaml, evaluate.yaml, sft.yaml and the groups).
CONFIG_DIR = Path(__file__).parent / "configs"
