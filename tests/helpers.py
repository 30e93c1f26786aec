"""Plain helpers shared by several test files. Fixtures stay in conftest.py, which no test imports
(tests/test_layout.py checks it); a helper that more than one file needs belongs here rather than in a test file.

transformers, TRL, datasets and hydra are imported inside the helpers that need them.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import types
import uuid
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from audiothink.audio import SAMPLE_RATE, write_wav
from audiothink.benchmarks.mmar import CATEGORIES, MODALITIES

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"

# --------------------------------------------------------------------------- the toy model and a GRPO step

# A prompt template in the training prompt's shape, for tests that build their dataset by hand.
PROMPT = "{question}\n{choices}\nThink inside <think></think> if needed, then answer inside <answer></answer>."


def load_toy(toy_model_dir: Path):
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    model = Qwen2AudioForConditionalGeneration.from_pretrained(toy_model_dir)
    processor = AutoProcessor.from_pretrained(toy_model_dir)
    return model, processor


def toy_grpo_args(tmp_path, **overrides):
    """GRPOConfig for a few CPU steps on the toy: G = 4, 8 completions a step, short completions."""
    from trl import GRPOConfig

    settings = dict(
        output_dir=str(tmp_path / "run"),
        num_generations=4,
        per_device_train_batch_size=8,
        max_steps=1,
        learning_rate=1e-3,
        beta=0.0,
        max_completion_length=24,
        bf16=False,
        activation_checkpointing=False,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        optim="adamw_torch",
        disable_dropout=True,
        seed=0,
    )
    return GRPOConfig(**(settings | overrides))


# --------------------------------------------------------------------------- a run's cache, with the default toy set


def toy_cache(tmp: Path) -> Path:
    """``tmp/cache``, for a subprocess run's ``AUDIOTHINK_CACHE``, holding the default toy set (what
    ``python -m audiothink.train`` builds into ``$AUDIOTHINK_CACHE/toy`` on first use) as a link to one copy built
    once per test process beside ``tmp``, in pytest's folder of this session (``tmp.parent``: every ``tmp_path`` and
    ``tmp_path_factory.mktemp`` folder of a session, or of an xdist worker, has the same parent). Each fresh cache
    would otherwise build its own: ~20 s and 160 MB on 2 cores, per test. Everything else a run keeps in its cache
    (the tiny Qwen3-Omni thinker, the 30 s-window copy) is still built in ``tmp/cache``. A test of the first-use
    build itself uses a bare ``tmp/cache`` (tests/e2e/test_distributed.py).
    """
    from audiothink.toy.data import ensure_toy

    shared = tmp.parent / "default-toy"
    ensure_toy(shared / "toy")  # built once: a complete current set is reused (its DONE file)
    cache = tmp / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    if not (cache / "toy").exists():
        (cache / "toy").symlink_to(shared / "toy", target_is_directory=True)
    return cache


# --------------------------------------------------------------------------- official-format benchmark fixtures

# (task, difficulty, category, sub-category, dataset, question, choices, answer): field values as they occur
# in the released MMAU metadata (tasks, difficulties, the two categories and real sub-category names).
_MMAU_ROWS = [
    ("sound", "easy", "Information Extraction", "Sound-Based Event Recognition", "AudioSet",
     "What is the main sound source in the audio?", ["Dog", "Car", "Bird", "Rain"], "Bird"),
    ("sound", "medium", "Reasoning", "Acoustic Source Inference", "AudioSet",
     "Based on the given audio, identify the source of the speaking voice.", ["Man", "Woman", "Child", "Robot"],
     "Man"),
    ("sound", "hard", "Reasoning", "Acoustic Scene Reasoning", "Clotho",
     "Where was this recording most likely made?", ["a kitchen", "a train station", "a forest", "a beach"],
     "a forest"),
    ("sound", "medium", ["Reasoning"], "Temporal Event Reasoning", "AudioSet",
     "Which sound is heard first?", ["a whistle", "a bell", "a horn"], "a bell"),
    ("music", "easy", "Information Extraction", "Rhythm and Tempo Understanding", "MusicCaps",
     "What is the tempo of the piece?", ["slow", "moderate", "fast"], "fast"),
    ("music", "medium", "Reasoning", "Musical Genre Reasoning", "MusicCaps",
     "Which genre does this piece belong to?", ["jazz", "heavy metal", "classical", "reggae"], "jazz"),
    ("music", "hard", "Information Extraction", "Harmony and Chord Progressions", "MusicBench",
     "Which chord is played last?", ["C major", "A minor", "G major", "E minor"], "A minor"),
    ("music", "hard", ["Information Extraction"], "Melodic Structure Interpretation", "MusicBench",
     "How does the melody move?", ["it rises", "it falls", "it stays flat", "it rises then falls"],
     "it rises then falls"),
    ("speech", "easy", "Information Extraction", "Conversational Fact Retrieval", "MELD",
     "How many people are speaking?", ["one", "two", "three", "four"], "two"),
    ("speech", "medium", "Reasoning", "Multi Speaker Role Mapping", "MELD",
     "What is the role of the second speaker?", ["a doctor", "a teacher", "a waiter", "a pilot"], "a waiter"),
    ("speech", "hard", "Information Extraction", "Phonemic Stress Pattern Analysis", "LibriSpeech",
     "Which word is stressed?", ["first", "second", "third"], "second"),
    ("speech", "hard", "Reasoning", "Emotion Flip Detection", "IEMOCAP",
     "How does the speaker's emotion change?", ["happy to sad", "sad to happy", "calm to angry", "no change"],
     "calm to angry"),
]

# MMAR: the 7 modalities and 4 layers of the release; sub-category names as free strings.
_MMAR_SUBS = {"Signal Layer": "Acoustic Quality Analysis", "Perception Layer": "Counting and Statistics",
              "Semantic Layer": "Content Analysis", "Cultural Layer": "Professional Knowledge"}


def tone(path: Path, freq: float, seconds: float) -> None:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    write_wav(path, 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32))


# Quirks of the released MMAU files, by row of _MMAU_ROWS (rows 3 and 7 have `category` as a one-element list
# in every fixture): an answer missing from the choices (one release had 147), a repeated choice and two
# choices with the same words (the current test-mini has 27 and 17), a padded choice, a repeated id.
_MMAU_QUIRKS = {
    0: {"answer": "a bird"},  # not one of ["Dog", "Car", "Bird", "Rain"]
    1: {"choices": ["Man", "Woman", "Woman", "Robot"]},
    2: {"choices": ["from near to far", "From far to near", "a forest", "a beach"], "answer": "a forest"},
    5: {"choices": ["jazz ", "heavy metal", "classical", "reggae"]},
    9: {"id": str(uuid.UUID(int=1000 + 8))},  # the id of row 8 again
}


def make_mmau_fixture(root: Path, name: str = "mmau-test-mini.json", *, with_answers: bool = True,
                      quirks: bool = False) -> Path:
    """``root/<name>`` (a JSON list, exactly the released fields) and ``root/test-mini-audios/<id>.wav``;
    with ``quirks``, the released files' quirks in the rows of ``_MMAU_QUIRKS``."""
    items = []
    for k, (task, diff, cat, sub, dataset, q, choices, answer) in enumerate(_MMAU_ROWS):
        rid = str(uuid.UUID(int=1000 + k))
        tone(root / "test-mini-audios" / f"{rid}.wav", 300 + 90 * k, 0.4 + 0.1 * (k % 4))
        item = {"id": rid, "audio_id": f"./test-mini-audios/{rid}.wav", "question": q, "choices": choices,
                "answer": answer, "dataset": dataset, "task": task, "split": "test-mini", "category": cat,
                "sub-category": sub, "difficulty": diff}
        if not with_answers:
            item.pop("answer")
            item["split"] = "test"
        if quirks:
            item.update(_MMAU_QUIRKS.get(k, {}))
        items.append(item)
    path = root / name
    path.write_text(json.dumps(items, indent=4), encoding="utf-8")
    return path


# Quirks of the released MMAR-meta.jsonl / .json, by item: choice lists ending in "" (4 in the release), a
# whitespace-only choice (the same thing to the official scorer), a padded answer and choice ("Andrew ").
_MMAR_QUIRKS = {
    1: {"choices": ["clip one", "clip two", "the flute", ""]},
    4: {"choices": ["clip one", "clip two", "the flute", "the bass drum", ""]},
    6: {"choices": ["clip one", "  ", "clip two"]},
    9: {"choices": ["clip one", "clip two "], "answer": "clip two "},
}


def make_mmar_fixture(root: Path, container: str = "jsonl", *, quirks: bool = False) -> Path:
    """``root/MMAR-meta.jsonl`` (or ``.json``, a list) and ``root/audio/<id>.wav``: 14 items, every modality
    twice, every layer; the newer copies' extra fields (thinking, cue, rubric) on some items; with
    ``quirks``, the released file's quirks in the items of ``_MMAR_QUIRKS``."""
    items = []
    for k in range(14):
        modality = MODALITIES[k % 7]
        category = CATEGORIES[k % 4]
        rid = f"{k:04d}"
        tone(root / "audio" / f"{rid}.wav", 250 + 70 * k, 0.3 + 0.05 * k)
        item = {"id": rid, "audio_path": f"./audio/{rid}.wav", "question": f"Question {k} about the clip?",
                "choices": ["clip one", "clip two", "the flute", "the bass drum"][: 2 + k % 3],
                "answer": "clip two" if k % 2 else "clip one", "modality": modality, "category": category,
                "sub-category": _MMAR_SUBS[category], "language": None if k % 3 else "en",
                "source": "YouTube", "url": f"https://www.youtube.com/watch?v=fixture{k}",
                "timestamp": "00:01:00-00:01:10"}
        if k % 5 == 0:
            item.update({"thinking": "a hidden rationale", "cue": "a cue", "rubric": ["step 1"]})
        if quirks:
            item.update(_MMAR_QUIRKS.get(k, {}))
        items.append(item)
    if container == "jsonl":
        path = root / "MMAR-meta.jsonl"
        path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    else:
        path = root / "MMAR-meta.json"
        path.write_text(json.dumps(items, indent=2), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- hub copies of the fixtures above

HUB_LAYOUTS = {"mmau": ("gamma-lab-umd/MMAU-test-mini", "AudioLLMs/MMAU-mini", "lmms-lab-audio/mmau"),
               "mmar": ("BoJack/MMAR", "ngqtrung/mmar")}


def _official_items(meta: Path) -> list[dict]:
    text = meta.read_text(encoding="utf-8")
    return [json.loads(x) for x in text.splitlines() if x.strip()] if meta.suffix == ".jsonl" else json.loads(text)


def _label(value):
    """A one-element list label (an MMAU quirk) as its string: an Arrow column holds one type."""
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def hub_columns(meta: Path, layout: str) -> dict[str, list]:
    """The official fixture ``meta`` (and the clips it names, next to it) in the columns of hub copy ``layout``,
    audio embedded as ``{"bytes", "path"}`` (the official files' bytes) except for BoJack/MMAR, which names
    them in ``audio_path`` as the official file does. Column names and value formats: data_cards/hub_copies.md."""
    items = _official_items(meta)

    def clip(item):
        rel = item.get("audio_id") or item["audio_path"]
        return {"bytes": (meta.parent / rel).read_bytes(), "path": Path(rel).name}

    def lettered(choices, fmt):
        return [fmt.format(chr(65 + i), c) for i, c in enumerate(choices)]

    rows = []
    for it in items:
        if layout in ("gamma-lab-umd/MMAU-test-mini", "AudioLLMs/MMAU-mini"):
            attrs = {k: it[k] for k in ("id", "audio_id", "dataset", "task", "split", "category", "sub-category",
                                        "difficulty") if k in it}
            row = {"context": clip(it), "instruction": it["question"], "choices": it["choices"]}
            if "answer" in it:
                row["answer"] = it["answer"]
            if layout == "AudioLLMs/MMAU-mini":  # AudioBench's copy: "(A) x" options and answer, attributes a struct
                k = it["choices"].index(it["answer"]) if "answer" in it else None
                row["choices"] = lettered(it["choices"], "({}) {}")
                if k is not None:
                    row["answer"] = row["choices"][k]
                row["other_attributes"] = {n: _label(v) for n, v in attrs.items()}
            else:  # JSON text (the copy's loaders parse a string or take a dict)
                row["other_attributes"] = json.dumps(attrs)
        elif layout == "lmms-lab-audio/mmau":
            row = {"audio": clip(it), **{k: _label(v) for k, v in it.items()}, "choices": json.dumps(it["choices"])}
        elif layout == "BoJack/MMAR":
            row = dict(it)
        elif layout == "ngqtrung/mmar":
            row = {"audio": clip(it), **{k: v for k, v in it.items() if k not in ("audio_path", "sub-category")},
                   "subcategory": it["sub-category"], "choices": lettered(it["choices"], "{}. {}"),
                   "answer": chr(65 + it["choices"].index(it["answer"]))}
        else:
            raise ValueError(layout)
        rows.append(row)
    names = list(dict.fromkeys(k for r in rows for k in r))
    return {k: [r.get(k) for r in rows] for k in names}


def make_hub_copy(meta: Path, layout: str, out: Path, form: str = "parquet") -> Path:
    """``hub_columns(meta, layout)`` written as ``out/test-00000-of-00001.parquet`` (``form="parquet"``; the path
    returned is the file), as that file in ``out`` (``"folder"``; the folder), or as a datasets ``save_to_disk``
    folder (``"save_to_disk"``, ``out``) with a real Audio feature (built from Arrow: encoding needs torchcodec)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = hub_columns(meta, layout)
    table = pa.table(cols)
    if form == "save_to_disk":
        import datasets

        features = datasets.Features.from_arrow_schema(table.schema)
        for name in ("audio", "context"):
            if name in features:
                features[name] = datasets.Audio()
        datasets.Dataset(table, info=datasets.DatasetInfo(features=features)).save_to_disk(str(out))
        return out
    out.mkdir(parents=True, exist_ok=True)
    path = out / "test-00000-of-00001.parquet"
    pq.write_table(table, path)
    return out if form == "folder" else path


# Two criteria in MMAR-meta.jsonl's rubric format (name, scoring_point, note, choices); the second is worth 2, so
# a rater's score is (first + second) / 3. Written by the tests: the release's rubric texts are not copied here.
RUBRIC_CRITERIA = [
    {"name": "Cue: the tone", "scoring_point": "Award 1 point if the reasoning names the tone.",
     "note": "a test criterion", "choices": [0, 1]},
    {"name": "Reasoning chain", "scoring_point": "Award 1 point per sound step from the tone to the answer.",
     "note": "a test criterion", "choices": [0, 1, 2]},
]


def make_rubric_file(meta: Path, path: Path) -> Path:
    """``path``: the MMAR fixture's items at ``meta`` with the newer release's ``thinking`` and ``rubric`` fields
    (:data:`RUBRIC_CRITERIA`), one JSON object a line, as MMAR-meta.jsonl has them."""
    text = meta.read_text(encoding="utf-8")
    items = json.loads(text) if meta.suffix == ".json" else [json.loads(x) for x in text.splitlines() if x.strip()]
    rows = [{**item, "thinking": f"reference reasoning for {item['id']}", "cue": ["tone"],
             "rubric": RUBRIC_CRITERIA} for item in items]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# A stand-in for the official code/evaluation_rubrics.py, written for the tests (its wording is ours, not the
# official one): the names and signatures the project reads from it, and top-level statements that fail if the
# script is ever imported or run (the official one asks for an API key when imported).
RUBRIC_SCRIPT = '''"""Rubric judge of the tests: a stand-in for MMAR's code/evaluation_rubrics.py."""
import module_that_is_not_installed  # importing the script fails here
from typing import List

raise SystemExit("the rubric script was run; only its constant and prompt function may be read")

EVALUATE_SYS_PROMPT = "{system}"
UNRELATED = compute_something()  # another top-level statement: never evaluated


def unrelated_helper(x: List[str]):
    raise AssertionError("not called by the prompt function")


def tidy(text: str):
    return "\\n".join(line.strip() for line in text.strip().splitlines())


def create_evaluation_user_prompt(question: str, answer: str, thinking: str, cue: List[str],
                                  thinking_prediction: str, answer_prediction: str, rubric) -> str:
    points = "\\n".join(f"* {{c['name']}} {{c['choices']}}: {{c['scoring_point']}}" for c in rubric)
    return tidy(f"""
        Q: {{question}} | right answer: {{answer}} | reference: {{thinking}} | cues: {{", ".join(cue)}}
        Grade each point:
        {{points}}
        Reasoning to judge:
        {{thinking_prediction}} The answer is {{answer_prediction}}.
        """)
'''
RUBRIC_SYSTEM = "You grade a model's reasoning against a rubric (the tests' judge)."
# what precedes the model's reasoning in the stand-in's prompt (the fake judge servers look for it)
REASONING_HEAD = "Reasoning to judge:\n"


def make_rubric_script(path: Path, system: str = RUBRIC_SYSTEM, text: str | None = None) -> Path:
    """``path``: :data:`RUBRIC_SCRIPT` with ``system`` as its system message (or ``text`` as the whole file)."""
    path.write_text(RUBRIC_SCRIPT.format(system=system) if text is None else text, encoding="utf-8")
    return path


def rubric_reply(*scores) -> str:
    """A judge's reply to the rubric prompt giving :data:`RUBRIC_CRITERIA` these scores, wrapped in prose."""
    rows = [{"name": c["name"], "score": s, "justification": "because"} for c, s in zip(RUBRIC_CRITERIA, scores)]
    return "Here is my evaluation:\n```json\n" + json.dumps(rows, indent=2) + "\n```"


def prediction_records(b, predictions, thinks=None):
    """Predictions records of benchmark ``b`` as the runner stores them: one per key, in order, with ``thinks``
    (key -> think text) marking the items answered after thinking."""
    thinks = thinks or {}
    return {k: {"key": k, "prediction": p, "think": thinks.get(k), "thinks": k in thinks,
                "mode": "no_think"} for k, p in zip(b.keys, predictions)}


# --------------------------------------------------------------------------- evaluation on the toy model


def eval_cfg(overrides):
    from hydra import compose, initialize_config_dir

    from audiothink.evaluate import register_eval_resolvers

    register_eval_resolvers()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("evaluate", overrides=list(overrides))


def run_eval(out: Path, *overrides):
    from audiothink.evaluate import evaluate

    return evaluate(eval_cfg([f"output_dir={out}", "eval.progress=false", *overrides]))


def toy_lora_adapter(toy_model_dir, path: Path, scale: float) -> Path:
    """A LoRA adapter of the toy on the language model's q/v projections, saved at ``path``: lora_B drawn with
    std ``scale`` (seed 0), so 0.0 is a no-op adapter."""
    from peft import LoraConfig, get_peft_model

    model, _ = load_toy(toy_model_dir)
    lm_only = r"^model\.language_model\..*\.(q_proj|v_proj)$"
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=lm_only, task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(0)
    for name, p in peft.named_parameters():
        if "lora_B" in name:  # B = 0 (the init) makes the adapter a no-op
            p.data = torch.randn(p.shape, generator=g) * scale
    peft.save_pretrained(path)
    return path


# --------------------------------------------------------------------------- training data sources


# One line of R1-AQA's AVQA annotations (its field names, an absolute audio path of the annotator's machine).
R1AQA_ROW = {
    "id": 183, "video_name": "-HG3Omg_89c_000030", "video_id": 341, "question_text": "What happened in the video?",
    "multi_choice": ["motorboat", "Yacht consignment", "Sailboat set sail", "Consignment car"], "answer": 1,
    "question_relation": "View", "question_type": "Happening", "dataset_name": "AVQA",
    "audio_path": "/home/someone/avqa/wavs/-HG3Omg_89c_30.wav",
}


def wav_bytes(seconds: float, rate: int = SAMPLE_RATE, value: float = 0.1) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.full(int(seconds * rate), value, np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def audio_dataset(rows: list[dict], multi: bool = False):
    """A datasets.Dataset with a real Audio feature, built from Arrow (encoding would need torchcodec)."""
    import datasets
    import pyarrow as pa

    cell = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    audio_type = pa.list_(cell) if multi else cell
    table = pa.table({
        "id": [r["id"] for r in rows],
        "audio": pa.array([r["audio"] for r in rows], type=audio_type),
        "question": [r["question"] for r in rows],
        "choices": [r["choices"] for r in rows],
        "answer": [r["answer"] for r in rows],
    })
    audio = datasets.List(datasets.Audio()) if multi else datasets.Audio()
    features = datasets.Features({"id": datasets.Value("string"), "audio": audio,
                                  "question": datasets.Value("string"),
                                  "choices": datasets.List(datasets.Value("string")),
                                  "answer": datasets.Value("int64")})
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features))


def hf_rows(n: int) -> list[dict]:
    return [{"id": f"r{i}", "audio": {"bytes": wav_bytes(0.1 * (i + 1)), "path": f"clip{i}.wav"},
             "question": "which sound is in the video?", "choices": ["rain", "wind"], "answer": i % 2}
            for i in range(n)]


def data_cfg(option: str, **overrides):
    from hydra import compose, initialize_config_dir

    from audiothink.plumbing.cli import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=[f"data={option}"] + [f"data.{k}={v}" for k, v in overrides.items()])
    return cfg.data


# --------------------------------------------------------------------------- a stand-in for Liger's kernels


class FakeRMSNorm(torch.nn.Module):
    def __init__(self, hidden_size, eps=1e-6, **_):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x):
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (self.weight * (x.float() * torch.rsqrt(var + self.variance_epsilon))).to(x.dtype)


def install_fake_liger(monkeypatch, norm, mlp, rope) -> None:
    """A stand-in ``liger_kernel.transformers`` with these classes, for this test only: monkeypatch records the
    real transformers attributes first (Liger swaps them), so they are back after the test."""
    from transformers.models.qwen2 import modeling_qwen2
    from transformers.models.qwen2_5_omni import modeling_qwen2_5_omni

    for module, names in ((modeling_qwen2, ("Qwen2RMSNorm", "Qwen2MLP", "apply_rotary_pos_emb")),
                          (modeling_qwen2_5_omni, ("Qwen2_5OmniRMSNorm", "Qwen2MLP", "apply_rotary_pos_emb"))):
        for name in names:
            monkeypatch.setattr(module, name, getattr(module, name))
    pkg = types.ModuleType("liger_kernel")
    sub = types.ModuleType("liger_kernel.transformers")
    sub.LigerRMSNorm, sub.LigerSwiGLUMLP, sub.liger_rotary_pos_emb = norm, mlp, rope
    monkeypatch.setitem(sys.modules, "liger_kernel", pkg)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", sub)


# --------------------------------------------------------------------------- vLLM rollouts (tests/test_vllm_rollout_server.py)


def random_waves(*seconds):
    """One clip of seeded noise per duration (seconds, 16 kHz float32)."""
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(int(s * SAMPLE_RATE))).astype(np.float32) for s in seconds]


def chat_prompt_ids(processor, clip_sets):
    """The expanded prompt ids the processor makes of one user turn per clip set (its clips, then "Q?")."""
    ids = []
    for clips in clip_sets:
        msgs = [{"role": "user", "content": [{"type": "audio"}] * len(clips) + [{"type": "text", "text": "Q?"}]}]
        text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        enc = processor(text=[text], audio=clips, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        ids.append(enc["input_ids"][0].tolist())
    return ids


def mixed_clip_dataset(toy_files, n=8):
    """``n`` toy training rows as a dataset, half of them multi-clip prompts."""
    from audiothink.data import load_samples, to_dataset

    samples = load_samples(toy_files["train"]).samples
    two = [s for s in samples if len(s.audio) > 1][: n // 2]  # multi-clip prompts (toy v3: four clips)
    one = [s for s in samples if len(s.audio) == 1][: n - len(two)]
    assert two and one
    return to_dataset(two + one, PROMPT)


# --------------------------------------------------------------------------- the bench/ scripts


def load_bench_script(name: str) -> types.ModuleType:
    """``bench/<name>.py`` as a module (bench/ is not a package: its scripts run as ``python bench/<name>.py``).

    Raises FileNotFoundError when the script does not exist."""
    path = REPO / "bench" / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(path)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
