"""AudioGRPOTrainer overrides private TRL methods: pin TRL and the signatures it calls them with."""

from __future__ import annotations

import inspect

import trl
from trl import GRPOTrainer

from audiothink.trainer import AudioGRPOTrainer

# name -> the parameters TRL 1.16.0 defines (and calls with); a TRL upgrade that changes them fails here.
EXPECTED = {
    "_generate_and_score_completions": ["self", "inputs"],
    "_tokenize_prompts": ["self", "prompts"],
    "_compute_loss": ["self", "model", "inputs"],
    "_calculate_rewards": ["self", "inputs", "prompts", "completions", "completion_ids_list"],
    "_get_per_token_logps_and_entropies": [
        "self", "model", "input_ids", "attention_mask", "logits_to_keep", "batch_size", "compute_entropy",
        "compute_aux_loss", "pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask",
        "spatial_shapes", "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids",
    ],
    # resume: strict, name-mapped weight loading; a sampler whose epoch order survives a resume
    "_load_from_checkpoint": ["self", "resume_from_checkpoint", "model"],
    "_get_train_sampler": ["self", "dataset"],
    # atomic checkpoints: a "being written" marker around the save and its on_save callbacks
    "_save_checkpoint": ["self", "model", "trial"],
    "_maybe_log_save_evaluate": ["self", "tr_loss", "grad_norm", "model", "trial", "epoch", "ignore_keys_for_eval",
                                 "start_time", "learning_rate"],
    # no model card (TRL's names a local base model "None")
    "create_model_card": ["self", "model_name", "dataset_name", "tags"],
    # not overridden, but relied on: it forwards `multimodal_fields` (our audio features) to generate()
    "_generate_single_turn": ["self", "prompt_ids", "images", "multimodal_fields", "num_generations",
                              "has_tool_images"],
}


def test_trl_is_the_pinned_version():
    assert trl.__version__ == "1.16.0"


def test_trl_signatures_unchanged():
    for name, params in EXPECTED.items():
        assert list(inspect.signature(getattr(GRPOTrainer, name)).parameters) == params, name


def test_overrides_accept_what_trl_passes():
    for name, params in EXPECTED.items():
        ours = inspect.signature(getattr(AudioGRPOTrainer, name))
        # every positional parameter TRL defines is accepted by name, the rest through **kwargs
        has_var_kw = any(p.kind is p.VAR_KEYWORD for p in ours.parameters.values())
        for p in params:
            assert p in ours.parameters or has_var_kw, f"{name}: {p}"


def test_generate_single_turn_passes_multimodal_fields_to_generate():
    src = inspect.getsource(GRPOTrainer._generate_single_turn)
    assert "for k, v in multimodal_fields.items()" in src and "generate_inputs[k] = v" in src
