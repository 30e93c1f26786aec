"""AudioGRPOTrainer overrides private TRL methods: pin TRL, the signatures it calls them with, and a fingerprint
of each TRL (and transformers) body it relies on: an upgrade that changes one fails here, saying what to re-check."""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import io
import textwrap
import tokenize

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


# ----------------------------------------------------------------------------------------------------------
# TRL (and transformers) bodies the trainer relies on: a fingerprint of each, so that an upgrade that changes
# one fails here and names what to re-check. The signatures above cannot see a changed body.


def fingerprint(func) -> str:
    """sha256 (16 hex digits) of `func`'s source without its docstring, comments, blank lines and trailing blanks.

    Comment, docstring, blank-line and trailing-space edits keep the fingerprint; any other change to the text of
    the code (a line, its indentation, a name, a re-wrapped call) changes it. Works on the source text (not on
    ast.dump, whose output changes between Python versions), so it is the same on every Python version.
    """
    return _fingerprint_source(inspect.getsource(func))


def _fingerprint_source(source: str) -> str:
    src = textwrap.dedent(source)
    lines = src.splitlines()
    node = ast.parse(src).body[0]
    body = node.body
    skip = set()
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        skip = set(range(body[0].lineno - 1, body[0].end_lineno))
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            lines[row - 1] = lines[row - 1][:col]
    kept = [line.rstrip() for i, line in enumerate(lines) if i not in skip and line.strip()]
    return hashlib.sha256("\n".join(kept).encode()).hexdigest()[:16]


def _resolve(path: str):
    module, _, attr = path.partition(":")
    obj = importlib.import_module(module)
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


GRPO = "trl.trainer.grpo_trainer:GRPOTrainer."
TRAINER = "transformers.trainer:Trainer."
# body -> (fingerprint for TRL 1.16.0 / transformers 5.23.0, what audiothink assumes of it: re-check that)
RELIED_ON = {
    GRPO + "__init__": ("d794b15d9ea76007", "given processing_class=tokenizer it takes the text-only path (no "
                        "image processor, no config.image_token_id); self._logs holds deques of the last rollout "
                        "(CompletionSample reads completion/rewards/advantages); use_vllm builds its engine inline "
                        "(audio_engine_in swaps in AudioVLLMGeneration); reward_func_names/reward_weights; async_loop"),
    GRPO + "_generate_and_score_completions": (
        "4e80ae958e5da4c5", "it calls _generate (hence _tokenize_prompts) and then the old/reference log-prob "
        "passes within the one call (AudioGRPOTrainer._audio covers them), _calculate_rewards(inputs, prompts, "
        "completions, completion_ids_list) after generation, fills self._logs after the rewards, pads prompt ids "
        "on the left, and returns a dict of per-row tensors that the audio__ keys can join"),
    GRPO + "_generate": ("33ec69a68a5949e6", "it calls _tokenize_prompts(prompts) once for the batch, before "
                         "generation, and hands its multimodal fields to _generate_single_turn"),
    GRPO + "_generate_single_turn": ("f84edce5a604171f", "multimodal_fields reach model.generate (the audio "
                                     "features of the rollout); the vLLM branch goes through self.vllm_generation"),
    GRPO + "_tokenize_prompts": ("2abdd7855304538f", "AudioGRPOTrainer replaces it: the return value is still "
                                 "(prompt_ids, images, multimodal_fields), and nothing else of it is needed"),
    GRPO + "_get_per_token_logps_and_entropies": (
        "cb3259177d76d201", "it calls model(**model_inputs, ...) once per chunk, rows in order, with "
        "input_ids=input_ids[start:end] as a keyword (the pre-hook feeds each call its rows' audio); the images' "
        "arguments are all that AudioGRPOTrainer leaves out"),
    GRPO + "_compute_loss": ("0fa47053e69b5847", "it scores the micro-batch's rows in the order of `inputs` with "
                             "one _get_per_token_logps_and_entropies call (the audio__ keys of `inputs` feed it)"),
    GRPO + "_prepare_inputs": ("0b769b55fe83e200", "the generated batch is shuffled and split as a whole dict of "
                               "per-row tensors (shuffle_sequence_dict, split_tensor_dict), so the audio__ rows "
                               "stay with their token ids"),
    "trl.trainer.utils:shuffle_sequence_dict": ("5604c86925ca53c2", "every tensor of the batch dict is permuted "
                                                "along dim 0 with the same permutation"),
    "trl.trainer.utils:split_tensor_dict": ("067a3e25a1028603", "every tensor of the batch dict is split along "
                                            "dim 0 into the same chunks"),
    GRPO + "_calculate_rewards": ("ebcdf099b720e0b1", "reward functions get prompts/completions/completion_ids, "
                                  "the dataset columns, trainer_state, log_extra, log_metric; the result is "
                                  "gathered over the ranks in rank order, one row per completion"),
    GRPO + "_log_metric": ("1a309a8ef3732118", "log_metric appends to self._pending_metrics, which "
                           "_generate_and_score_completions averages per step (judge/failures is pre-summed)"),
    GRPO + "log": ("27dc3f9fd82e047b", "self._metrics[mode] lists are averaged per logging step and cleared "
                   "(think/*, health/scored, audio/clipped_clips go through it)"),
    GRPO + "_get_train_sampler": ("32577f4c28bf47dd", "it returns a RepeatSampler whose constructor fields "
                                  "EpochRepeatSampler.like copies (audiothink/plumbing/sampler.py)"),
    "trl.trainer.utils:RepeatSampler.__init__": ("a3961e2a09a8c3a9", "the fields EpochRepeatSampler.like copies; "
                                                 "the generator is seeded once with `seed`"),
    "trl.trainer.utils:RepeatSampler.__iter__": ("156a978678f74ea1", "one torch.randperm(num_samples) per pass "
                                                 "(EpochRepeatSampler.set_epoch replays e of them)"),
    GRPO + "_save_checkpoint": ("e1179698f93075ef", "it writes the model card through create_model_card (which "
                                "AudioGRPOTrainer turns off) and saves through Trainer._save_checkpoint"),
    GRPO + "create_model_card": ("9bb7a894273ad5e4", "AudioGRPOTrainer replaces it with nothing"),
    TRAINER + "_save_checkpoint": ("5d2ad2e0f2e5e5af", "the folder is <output_dir>/checkpoint-<global_step> "
                                   "(the 'being written' marker goes there)"),
    TRAINER + "_maybe_log_save_evaluate": ("e964c2acd770deef", "the checkpoint (and the on_save callbacks) is "
                                           "saved inside it, so the marker can be removed after it returns"),
    TRAINER + "_load_from_checkpoint": ("c2e6a7e78c3d0866", "for LoRA, FSDP and DeepSpeed it loads the "
                                        "checkpoint's weights as audiothink wants them; full fine-tuning is "
                                        "loaded by audiothink/plumbing/checkpoints.py instead"),
    TRAINER + "_inner_training_loop": ("5a44ea7a7a44bb71", "after each micro-step: on_substep_end before the "
                                       "optimizer step, on_step_end after global_step += 1 (CompletionSample's "
                                       "step labels)"),
}


def test_trl_bodies_unchanged():
    """A TRL (or transformers) upgrade that changes a body AudioGRPOTrainer relies on fails here, naming it and
    what to re-check. After re-checking (and fixing audiothink/trainer.py if needed), record the new fingerprints:
    ``python -m tests.test_trainer_signatures`` prints them."""
    changed = []
    for path, (recorded, recheck) in RELIED_ON.items():
        now = fingerprint(_resolve(path))
        if now != recorded:
            changed.append(f"{path.replace(':', '.')}: fingerprint {now}, recorded {recorded}; re-check that {recheck}")
    assert not changed, (
        "the TRL/transformers code AudioGRPOTrainer relies on changed (TRL %s):\n  " % trl.__version__
        + "\n  ".join(changed)
    )


def test_the_fingerprint_sees_code_and_ignores_comments():
    body = '    def f(self, x):\n        """doc"""\n        y = x + 1  # one\n        return y\n'
    same = '    def f(self, x):\n        # a comment only\n\n        y = x + 1\n        return y   \n'
    code = '    def f(self, x):\n        """doc"""\n        y = x + 2  # one\n        return y\n'
    indent = '    def f(self, x):\n        """doc"""\n        if x:\n            y = x + 1\n        return y\n'
    dedent = '    def f(self, x):\n        """doc"""\n        if x:\n            y = x + 1\n            return y\n'
    fingerprints = [_fingerprint_source(s) for s in (body, same, code, indent, dedent)]
    assert fingerprints[0] == fingerprints[1]
    assert len(set(fingerprints[1:])) == 4


if __name__ == "__main__":
    for path in RELIED_ON:
        print(f"{fingerprint(_resolve(path))}  {path}")
