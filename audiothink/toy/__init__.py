"""The embedded toy: a tiny Qwen2-Audio-shaped model and a synthetic audio task, for the default run and CPU tests."""

from pathlib import Path

# The shipped toy checkpoint (model.path's default, ${toy_model_dir:} in the configs).
TOY_MODEL_DIR = Path(__file__).parent / "assets" / "model"
