"""LLM2LLM recipes (``train/llm2llm-*.yaml``): the task, the seed, the student, the teacher, the loop.

The student section is a ``flan train`` recipe body (model, peft, sft, train), checked by the
trainer's own validator, so every trainer setting works here the same way. Nothing here
imports torch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flan_builder.errors import FlanError
from flan_builder.training.recipe import (
    apply_overrides,
    check_section,
    one_of,
    positive,
    read_recipe_file,
    validate_recipe,
)

# Each variant is one loop; together they are the paper's baselines and ablations.
VARIANTS = {
    "llm2llm": "the paper's loop: augment the seed examples the student gets wrong; retrain from the base",
    "one_shot": "as many teacher examples as llm2llm added by then, written at once from random seed "
    "examples (not iteratively)",
    "all_seed": "augment every seed example each iteration, not only the wrong ones",
    "continue": "continue training the last student instead of retraining from the base model",
    "synthetic_only": "train on the synthetic examples alone (the seed is used for mining only)",
    "nearest": "perfect-teacher control: the 'teacher' returns the held-aside real train rows of the "
    "same label nearest (TF-IDF) to each wrong example",
}


def _fraction_or_count(value: Any) -> str | None:
    if isinstance(value, float) and not value.is_integer():
        return None if 0 < value < 1 else "must be a count (>= 1) or a fraction in (0, 1)"
    return None if value >= 1 else "must be a count (>= 1) or a fraction in (0, 1)"


def _unit(value: Any) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]"


def _variants(value: Any) -> str | None:
    unknown = [v for v in value if v not in VARIANTS]
    if unknown or not value:
        return f"takes a non-empty list of {', '.join(VARIANTS)}"
    if "one_shot" in value and "llm2llm" not in value:
        return "with one_shot needs llm2llm too (one_shot matches llm2llm's count of new examples)"
    return None


_TOP = {
    "name": ((str,), None, None),
    "description": ((str,), None, ""),
    "task": ((str,), None, None),
    "data_dir": ((str, type(None)), None, None),
    "seed_size": ((int, float), _fraction_or_count, 50),
    "seeds": ((list,), None, [0]),
    "iterations": ((int,), positive, 3),
    "per_wrong": ((int,), positive, 1),  # teacher examples asked for per wrong seed example
    "dedup_threshold": ((int, float), _unit, 0.95),  # drop a new example above this ROUGE-L F1
    "templates": ((int,), positive, 1),  # train and grade with the first K non-inverted templates
    "with_options": ((bool,), None, True),
    "eval_split": ((str,), one_of("eval", "train"), "eval"),
    "max_test_rows": ((int, type(None)), None, 200),
    "show_student_answer": ((bool,), None, False),  # the teacher also sees the wrong answer
    "variants": ((list,), _variants, ["llm2llm"]),
    "batch_size": ((int, str), None, "auto"),
    "teacher": ((dict,), None, {}),
    "student": ((dict,), None, {}),
}
_TEACHER = {
    "model": ((str, type(None)), None, "smollm2-135m"),  # a local model `flan models` resolves
    "endpoint": ((str, type(None)), None, None),  # or an OpenAI-compatible server's base URL
    "endpoint_model": ((str, type(None)), None, None),  # the server's model name (default: its first)
    "api_key_env": ((str,), None, "OPENAI_API_KEY"),
    "concurrency": ((int,), positive, 4),
    "max_requests": ((int, type(None)), None, None),
    "max_tokens": ((int, type(None)), None, None),  # prompt + completion tokens, the whole run
    "temperature": ((int, float), None, 0.7),
    "top_p": ((int, float), _unit, 0.95),
    "max_new_tokens": ((int,), positive, 160),
    "prompt": ((str, type(None)), None, None),  # a Jinja file; default: the one for the task's kind
}
_STUDENT = {
    "model": ((str,), None, "smollm2-135m"),
    "peft": ((dict,), None, {}),
    "sft": ((dict,), None, {}),
    "train": ((dict,), None, {}),
}
# The student trains by epochs: the data grows each iteration (LLM2LLM trains a fixed number of
# epochs on seed + synthetic data).
STUDENT_SFT_DEFAULTS = {
    "max_steps": -1,
    "num_train_epochs": 6,
    "learning_rate": 1.0e-3,
    "per_device_train_batch_size": 8,
    "max_length": 256,
    "save_steps": 200,
    "save_total_limit": 1,
    "logging_steps": 10,
    "warmup_steps": 0.05,
}


@dataclass
class Llm2llmRecipe:
    """A checked recipe; ``to_json`` is what the report records."""

    name: str
    task: str
    seed_size: int | float
    seeds: list[int]
    iterations: int
    per_wrong: int
    dedup_threshold: float
    templates: int
    with_options: bool
    eval_split: str
    max_test_rows: int | None
    show_student_answer: bool
    variants: list[str]
    batch_size: int | str
    teacher: dict[str, Any]
    student: dict[str, Any]
    data_dir: str | None = None
    description: str = ""
    source: str = "<recipe>"

    def student_recipe(self, output: Path, dataset: Path, seed: int, model: str | None = None) -> Any:
        """The ``flan train`` recipe of one student (its data, output, seed; optionally another start)."""
        body = copy.deepcopy(self.student)
        sft = {**STUDENT_SFT_DEFAULTS, **body.get("sft", {}), "seed": seed}
        data = {
            "name": f"{self.name}-student",
            "model": model or body["model"],
            "heldout": "none",
            "output": str(output),
            "dataset": {"path": str(dataset)},
            "peft": body.get("peft", {}),
            "sft": sft,
            "train": body.get("train", {}),
        }
        return validate_recipe(data, f"{self.source} (student)")

    def to_json(self) -> dict[str, Any]:
        return copy.deepcopy(self.__dict__)


def validate(data: dict[str, Any], source: str) -> Llm2llmRecipe:
    """Check every key; unknown keys and bad values name the key and the file."""
    top = check_section(data, _TOP, "", source)
    if not top["task"]:
        raise FlanError(f"{source}: missing required key 'task' (a task name, e.g. trec or glue_sst2)")
    teacher = check_section(top["teacher"], _TEACHER, "teacher", source)
    if teacher["endpoint"] and not str(teacher["endpoint"]).startswith(("http://", "https://")):
        raise FlanError(
            f"{source}: teacher.endpoint must be an http(s) URL such as "
            f"http://127.0.0.1:8000/v1 (got {teacher['endpoint']!r})"
        )
    if not teacher["endpoint"] and not teacher["model"]:
        raise FlanError(f"{source}: the teacher needs teacher.model (a local model) or teacher.endpoint")
    student = check_section(top["student"], _STUDENT, "student", source)
    seeds = top["seeds"]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise FlanError(f"{source}: seeds must be a non-empty list of integers (got {seeds!r})")
    if top["max_test_rows"] is not None and top["max_test_rows"] < 1:
        raise FlanError(f"{source}: max_test_rows must be at least 1 or null (got {top['max_test_rows']})")
    name = top["name"] or Path(source).stem
    recipe = Llm2llmRecipe(
        name=name,
        task=top["task"],
        seed_size=top["seed_size"],
        seeds=list(seeds),
        iterations=top["iterations"],
        per_wrong=top["per_wrong"],
        dedup_threshold=float(top["dedup_threshold"]),
        templates=top["templates"],
        with_options=top["with_options"],
        eval_split=top["eval_split"],
        max_test_rows=top["max_test_rows"],
        show_student_answer=top["show_student_answer"],
        variants=list(top["variants"]),
        batch_size=top["batch_size"],
        teacher=teacher,
        student=student,
        data_dir=top["data_dir"],
        description=top["description"],
        source=source,
    )
    recipe.student_recipe(Path("runs/check"), Path("build/check"), seeds[0])  # the trainer's checks, now
    return recipe


def load_llm2llm_recipe(path: Path, overrides: list[str] | None = None) -> Llm2llmRecipe:
    """Read, override (``--set key=value``) and check a recipe file."""
    data = apply_overrides(read_recipe_file(Path(path)), overrides or [])
    return validate(data, str(path))
