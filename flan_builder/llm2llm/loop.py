"""``flan llm2llm``: the loop, per sampling seed and variant, each iteration committed atomically.

Iteration k (0..N) trains a student on the seed plus the synthetic examples made so far (from
the base model, or from the last student for the ``continue`` variant), grades it on the seed
rows and on the test rows, and (k < N) asks the teacher for new examples from the seed rows it
got wrong, keeping those that parse, validate and are not near-copies. Iteration 0 (the seed
alone) is trained once per seed and shared by every variant.

Work folder ``.OUT.partial/``: ``teacher_cache.jsonl`` (every teacher answer by prompt hash),
``seed<S>/rows`` and ``seed<S>/data`` (each student's rows and built dataset), ``seed<S>/runs``
(the students), and ``seed<S>/<variant>/iter-<k>/`` (the committed iterations: ``record.json``,
``synthetic.jsonl``, ``added.jsonl``, ``predictions.jsonl``). A run started again continues
after the last committed iteration; the report is written atomically at the end.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flan_builder.errors import FlanError
from flan_builder.llm2llm.dedup import RougeDeduper, example_text
from flan_builder.llm2llm.recipe import Llm2llmRecipe
from flan_builder.llm2llm.task_rows import TaskFormat, sample_seed, seed_count, task_format
from flan_builder.llm2llm.teacher import (
    Answer,
    Example,
    PromptWriter,
    options_of,
    parse_answer,
    reason_category,
)
from flan_builder.workdir import partial_dir

RECORD = "record.json"
TEST_SEED = 0  # the test rows are the same for every sampling seed


@dataclass
class Llm2llmRun:
    """What a user asks ``flan llm2llm`` for, beyond the recipe."""

    recipe: Llm2llmRecipe
    out: Path
    resume: bool = False
    overwrite: bool = False
    log: Any = None  # where progress lines go (None: stderr at the time)


@dataclass
class Task:
    """The task's rows as the loop uses them."""

    fmt: TaskFormat
    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    evaluation: dict[str, Any]
    split: str


def load_task(recipe: Llm2llmRecipe) -> Task:
    """The task's format, its train split and its (capped) test rows."""
    from flan_builder.sources import load_split, resolve_data_dir, split_for
    from flan_builder.specs import load_registry

    registry = load_registry()
    spec = registry.task(recipe.task)
    fmt = task_format(spec, recipe.templates)
    if split_for(spec, "train") is None:
        raise FlanError(
            f"task {spec.name} has no train split (its spec declares: "
            f"{', '.join(spec.source.splits)}); LLM2LLM samples its seed from the train split"
        )
    data_dir = resolve_data_dir(recipe.data_dir)
    train = load_split(spec, "train", data_dir).all()
    test_rows = load_split(spec, recipe.eval_split, data_dir)
    test = test_rows.all()
    if recipe.max_test_rows is not None and len(test) > recipe.max_test_rows:
        test = [
            test[i] for i in sorted(random.Random(TEST_SEED).sample(range(len(test)), recipe.max_test_rows))
        ]
    return Task(fmt, train, test, registry.evaluation(spec).to_json(), test_rows.split)


def teacher_identity(recipe: Llm2llmRecipe) -> str:
    teacher = recipe.teacher
    if teacher["endpoint"]:
        return f"{teacher['endpoint']} ({teacher['endpoint_model'] or 'first listed model'})"
    return str(teacher["model"])


def _load_teacher_lm(recipe: Llm2llmRecipe) -> Any:
    from flan_builder.lm.load import load_lm

    teacher = recipe.teacher
    if teacher["endpoint"]:
        from flan_builder.lm.openai_compat import EndpointSpec

        spec = EndpointSpec(
            base_url=teacher["endpoint"],
            model=teacher["endpoint_model"],
            api_key_env=teacher["api_key_env"],
            concurrency=teacher["concurrency"],
            max_requests=teacher["max_requests"],
            max_tokens_total=teacher["max_tokens"],
        )
        return load_lm(spec)
    return load_lm(teacher["model"], recipe.batch_size)


class Loop:
    """One ``flan llm2llm`` invocation: every seed, variant and iteration not yet committed."""

    def __init__(self, run: Llm2llmRun) -> None:
        self.run, self.recipe = run, run.recipe
        self.work = partial_dir(run.out)
        self.task = load_task(self.recipe)
        self.fmt = self.task.fmt
        self.writer = PromptWriter(self.fmt, self.recipe.teacher["prompt"], self.recipe.show_student_answer)
        self._teacher_lm: Any = None
        self._nearest: dict[int, Any] = {}
        self.label = self.fmt.answer_field if self.fmt.kind == "classification" else None

    def say(self, text: str) -> None:
        print(text, file=self.run.log or sys.stderr)

    # -- pieces ---------------------------------------------------------------------------------

    def seed_rows(self, seed: int) -> tuple[list[dict[str, Any]], list[int]]:
        count = seed_count(self.recipe.seed_size, len(self.task.train), f"task {self.fmt.spec.name}")
        chosen = sample_seed(self.task.train, count, seed, self.label)
        return [self.task.train[i] for i in chosen], chosen

    def examples(
        self, rows: list[dict[str, Any]], ids: list[int], graded: dict[int, str] | None
    ) -> list[Example]:
        """Seed rows as teacher examples, with what the student answered when it was wrong."""
        from flan_builder.llm2llm.grading import render_rows

        rendered = render_rows(self.fmt, [rows[i] for i in ids], self.recipe.with_options, "train")
        first = {}
        for r in rendered:
            first.setdefault(r["row"], r)
        out = []
        for position, i in enumerate(ids):
            row = rows[i]
            options = options_of(self.fmt, row)
            out.append(
                Example(
                    i,
                    row,
                    first[position]["prompt"],
                    self.fmt.answer_text(row, options),
                    (graded or {}).get(i),
                    tuple(options) if options else None,
                )
            )
        return out

    def teacher(self, seed: int, variant: str, pool: list[dict[str, Any]], used: set[int]) -> Any:
        from flan_builder.llm2llm.nearest import NearestTeacher
        from flan_builder.llm2llm.teacher import Teacher, TeacherCache

        if variant == "nearest":  # one per seed: its TF-IDF index is fitted once, on the fixed pool
            if seed not in self._nearest:
                self._nearest[seed] = NearestTeacher(self.fmt, pool)
                self._nearest[seed].used |= used  # rows given before a resume
            return self._nearest[seed]
        if self._teacher_lm is None:
            self._teacher_lm = _load_teacher_lm(self.recipe)
        settings = {k: self.recipe.teacher[k] for k in ("max_new_tokens", "temperature", "top_p")}
        return Teacher(
            self._teacher_lm,
            teacher_identity(self.recipe),
            self.writer,
            TeacherCache(self.work / "teacher_cache.jsonl"),
            settings,
        )

    def build(self, rows: list[dict[str, Any]], folder: Path, seed: int) -> Path:
        """The student's rows as a built dataset (through the ordinary builder, the task's templates)."""
        import dataclasses

        from flan_builder.build import BuildConfig, build
        from flan_builder.mixing import MixingConfig
        from flan_builder.specs import Registry

        out = folder / "dataset"
        if (out / "manifest.json").is_file():
            return out
        mirror = folder / "rows"
        spec = self.fmt.spec
        (mirror / spec.source.mirror).mkdir(parents=True, exist_ok=True)
        with (mirror / spec.source.mirror / "train.jsonl").open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        local = dataclasses.replace(
            spec, source=dataclasses.replace(spec.source, splits={"train": "train"}, tabular=None)
        )
        registry = Registry(tasks={spec.name: local}, root=spec.path.parent.parent)
        cap = max(len(rows), 1)
        # templates: the first K asking templates (the format's), one drawn per row; every row once
        mixing = MixingConfig(max_templates=max(self.fmt.templates) + 1, max_per_dataset=cap, rate_cap=cap)
        build(
            BuildConfig(
                heldout=None,
                out=out,
                data_dir=mirror,
                seed=seed,
                tasks=[spec.name],
                with_options=self.recipe.with_options,
                mixing=mixing,
                overwrite=True,
            ),
            registry=registry,
        )
        return out

    def train(self, rows: list[dict[str, Any]], seed: int, start: str | None) -> tuple[Path, dict[str, Any]]:
        """A student trained on ``rows`` from the base model (or ``start``); a student trained before
        on the same rows from the same start is reused, whichever variant or iteration made it."""
        import hashlib

        from flan_builder.training.job import RUN_MANIFEST, train

        merge = "continue" in self.recipe.variants  # the continue variant starts from merged students
        digest = hashlib.sha256(json.dumps([rows, start, merge], sort_keys=True).encode()).hexdigest()[:16]
        folder = self.work / f"seed{seed}" / "students" / digest
        run_dir = folder / "run"
        if (run_dir / RUN_MANIFEST).is_file():
            return run_dir, json.loads((run_dir / RUN_MANIFEST).read_text(encoding="utf-8"))
        dataset = self.build(rows, folder, seed)
        recipe = self.recipe.student_recipe(run_dir, dataset, seed, start)
        recipe.train["merge"] = merge
        resume = partial_dir(run_dir).is_dir() and any(
            (partial_dir(run_dir) / "checkpoints").glob("checkpoint-*")
        )
        return run_dir, train(recipe, resume=resume, overwrite=not resume).manifest

    def grade(
        self, run_dir: Path, seed_rows: list[dict[str, Any]], cache: Path
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The student's answers on the seed rows and on the test rows, and which are right."""
        from flan_builder.atomic import write_json_atomic
        from flan_builder.llm2llm.grading import grade, render_rows
        from flan_builder.lm.load import load_lm

        # a student is graded once, however many variants share it
        saved = cache / "graded.json"
        if saved.is_file():
            graded = json.loads(saved.read_text(encoding="utf-8"))
            return graded["seed"], graded["test"]
        lm = load_lm(str(run_dir), self.recipe.batch_size)
        try:
            on_seed = grade(
                lm,
                self.fmt,
                render_rows(self.fmt, seed_rows, self.recipe.with_options, "train"),
                self.recipe.with_options,
                self.task.evaluation,
            )
            on_test = grade(
                lm,
                self.fmt,
                render_rows(self.fmt, self.task.test, self.recipe.with_options, self.task.split),
                self.recipe.with_options,
                self.task.evaluation,
            )
        finally:
            lm.close()
        cache.mkdir(parents=True, exist_ok=True)
        write_json_atomic(saved, {"seed": on_seed, "test": on_test})
        return on_seed, on_test

    def augment(
        self,
        teacher: Any,
        examples: list[Example],
        samples: int,
        synthetic: list[dict[str, Any]],
        seed_rows: list[dict[str, Any]],
        iteration: int,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Ask, parse, validate, dedup: (new synthetic entries, every answer with its verdict)."""
        answers: list[Answer] = teacher.ask(examples, samples, iteration) if examples else []
        deduper = RougeDeduper(
            self.recipe.dedup_threshold,
            [example_text(r, self.fmt.inputs) for r in seed_rows]
            + [example_text(s["row"], self.fmt.inputs) for s in synthetic],
        )
        kept, verdicts = [], []
        for answer in answers:
            row, why = parse_answer(self.fmt, answer.text)
            similarity = None
            if row is not None:
                keep, similarity = deduper.check(example_text(row, self.fmt.inputs))
                if not keep:
                    row, why = (
                        None,
                        f"near-copy (ROUGE-L F1 {similarity:.3f} > {self.recipe.dedup_threshold})",
                    )
            verdict = {
                "seed_id": answer.seed_id,
                "sample": answer.sample,
                "text": answer.text,
                "cached": answer.cached,
                "verdict": why,
                "rouge_l": similarity,
                "pool_index": answer.pool_index,
            }
            verdicts.append(verdict)
            if row is not None:
                kept.append(
                    {
                        "row": row,
                        "seed_id": answer.seed_id,
                        "iteration": iteration,
                        "pool_index": answer.pool_index,
                    }
                )
        return kept, verdicts

    # -- one variant ------------------------------------------------------------------------

    def committed(self, seed: int, variant: str) -> list[dict[str, Any]]:
        folder = self.work / f"seed{seed}" / variant
        records = []
        for k in range(self.recipe.iterations + 1):
            path = folder / f"iter-{k}" / RECORD
            if not path.is_file():
                break
            records.append(json.loads(path.read_text(encoding="utf-8")))
        return records

    def commit(
        self,
        seed: int,
        variant: str,
        k: int,
        record: dict[str, Any],
        synthetic: list[dict[str, Any]],
        verdicts: list[dict[str, Any]],
        predictions: list[dict[str, Any]],
    ) -> None:
        from flan_builder.atomic import atomic_directory

        out = self.work / f"seed{seed}" / variant / f"iter-{k}"
        with atomic_directory(out, overwrite=True) as tmp:
            for name, rows in (
                ("synthetic.jsonl", synthetic),
                ("added.jsonl", verdicts),
                ("predictions.jsonl", predictions),
            ):
                with (tmp / name).open("w", encoding="utf-8") as handle:
                    for row in rows:
                        handle.write(json.dumps(row) + "\n")
            (tmp / RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")  # last: marks complete

    def synthetic_of(self, seed: int, variant: str, k: int) -> list[dict[str, Any]]:
        path = self.work / f"seed{seed}" / variant / f"iter-{k}" / "synthetic.jsonl"
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def run_variant(self, seed: int, variant: str) -> list[dict[str, Any]]:
        seed_rows, seed_index = self.seed_rows(seed)
        in_seed = set(seed_index)
        pool = [row for i, row in enumerate(self.task.train) if i not in in_seed]
        records = self.committed(seed, variant)
        synthetic = self.synthetic_of(seed, variant, len(records) - 1) if records else []
        used = {s["pool_index"] for s in synthetic if s.get("pool_index") is not None}
        rng = random.Random(f"{seed}-{variant}")
        for k in range(len(records), self.recipe.iterations + 1):
            times = {"train_s": 0.0, "eval_s": 0.0, "teacher_s": 0.0}
            t0 = time.perf_counter()
            with_seed = variant != "synthetic_only" or k == 0
            if variant == "one_shot" and k > 0:  # match llm2llm's count, from random seed examples
                target = self.committed(seed, "llm2llm")[k - 1]["synthetic_total"]
                train_rows = seed_rows + [s["row"] for s in synthetic[:target]]
            else:
                train_rows = (seed_rows if with_seed else []) + [s["row"] for s in synthetic]
            start = None
            if variant == "continue" and k > 0:
                start = str(
                    self.work / f"seed{seed}" / "students" / records[-1]["student"] / "run" / "merged"
                )
            if train_rows:
                run_dir, manifest = self.train(train_rows, seed, start)
                student = run_dir.parent.name
            else:  # synthetic_only with nothing kept yet: the untuned model is what there is
                run_dir, manifest, student = Path(self.recipe.student["model"]), {"steps": 0}, "untuned"
            times["train_s"] = round(time.perf_counter() - t0, 1)
            t1 = time.perf_counter()
            on_seed, on_test = self.grade(
                run_dir, seed_rows, self.work / f"seed{seed}" / "students" / student
            )
            times["eval_s"] = round(time.perf_counter() - t1, 1)
            from flan_builder.llm2llm.grading import accuracy, wrong_rows

            wrong = wrong_rows(on_seed)
            verdicts: list[dict[str, Any]] = []
            exhausted = None
            spent: dict[str, int] = {}
            if k < self.recipe.iterations:
                t2 = time.perf_counter()
                before = dict(getattr(self._teacher_lm, "usage", None) or {})
                samples = self.recipe.per_wrong
                if variant == "all_seed":
                    ids = list(range(len(seed_rows)))
                elif variant == "one_shot":  # random seed examples, as many answers as llm2llm kept
                    need = max(self.committed(seed, "llm2llm")[k]["synthetic_total"] - len(synthetic), 0)
                    ids, samples = [rng.randrange(len(seed_rows)) for _ in range(need)], 1
                else:
                    ids = sorted(wrong)
                teacher = self.teacher(seed, variant, pool, used)
                # the student's answers are shown (when asked for) only where it was wrong
                examples = self.examples(seed_rows, ids, None if variant == "one_shot" else wrong)
                new, verdicts = self.augment(teacher, examples, samples, synthetic, seed_rows, k)
                synthetic = synthetic + new
                used |= {s["pool_index"] for s in new if s.get("pool_index") is not None}
                exhausted = teacher.exhausted
                times["teacher_s"] = round(time.perf_counter() - t2, 1)
                if variant != "nearest" and self._teacher_lm is not None:  # what this iteration cost
                    spent = {key: n - before.get(key, 0) for key, n in self._teacher_lm.usage.items()}
            record = {
                "seed": seed,
                "variant": variant,
                "iteration": k,
                "train_rows": len(train_rows),
                "seed_rows": len(seed_rows),
                "synthetic_in_training": len(train_rows) - (len(seed_rows) if with_seed else 0),
                "seed_accuracy": round(accuracy(on_seed), 2),
                "test_accuracy": round(accuracy(on_test), 2),
                "test_rows": len(self.task.test),
                "wrong_on_seed": len(wrong),
                "asked": len(verdicts),
                "added": sum(v["verdict"] == "ok" for v in verdicts),
                "rejected": _reasons(verdicts),
                "synthetic_total": len(synthetic),
                "teacher_exhausted": exhausted,
                "student": student,
                "student_steps": manifest.get("steps"),
                "final_loss": manifest.get("final_loss"),
                **times,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            if spent:
                record["teacher_usage"] = spent  # cached answers cost nothing
            predictions = [{"split": "seed", **g} for g in on_seed] + [
                {"split": "test", **g} for g in on_test
            ]
            self.commit(seed, variant, k, record, synthetic, verdicts, predictions)
            records.append(record)
            note = f"; teacher stopped: {exhausted}" if exhausted else ""
            if k < self.recipe.iterations and record["asked"] and not record["added"]:
                note += "; no answer was usable, nothing added"
            self.say(
                f"  seed {seed} {variant} iteration {k}: {len(train_rows)} training rows, seed acc "
                f"{record['seed_accuracy']:.1f}, test acc {record['test_accuracy']:.1f}, wrong {len(wrong)}, "
                f"added {record['added']}/{record['asked']} ({record['seconds']:.0f} s){note}"
            )
        return records

    # -- everything -------------------------------------------------------------------------

    def check_start(self) -> None:
        """Refuse to mix runs: a finished --out, an interrupted one without --resume, a changed recipe."""
        from flan_builder.atomic import check_output_free

        check_output_free(self.run.out, self.run.overwrite)
        state = self.work / "recipe.json"
        if self.work.exists():
            if self.run.overwrite:
                shutil.rmtree(self.work)
                return
            elif not self.run.resume:
                raise FlanError(
                    f"an interrupted run of {self.run.out} exists ({self.work}); pass --resume "
                    "to continue it or --overwrite to start over"
                )
            elif state.is_file():
                before = json.loads(state.read_text(encoding="utf-8"))
                now = _loop_settings(self.recipe)
                changed = [k for k in now if before.get(k) != now[k]]
                if changed:
                    raise FlanError(
                        f"--resume: the recipe changed since the run began ({', '.join(changed)}); "
                        "start over with --overwrite or use the original settings"
                    )

    def run_all(self) -> dict[str, Any]:
        started = time.perf_counter()
        self.check_start()
        if self.recipe.iterations and any(v != "nearest" for v in self.recipe.variants):
            self._teacher_lm = _load_teacher_lm(self.recipe)  # an unreachable teacher fails before any work
        self.work.mkdir(parents=True, exist_ok=True)
        settings = json.dumps(_loop_settings(self.recipe), indent=1)
        (self.work / "recipe.json").write_text(settings, encoding="utf-8")
        spec = self.fmt.spec
        self.say(
            f"llm2llm {spec.name} ({self.fmt.kind}): {len(self.task.train)} train rows, seed size "
            f"{self.recipe.seed_size}, {len(self.task.test)} test rows; teacher "
            f"{teacher_identity(self.recipe)}; variants {', '.join(self.recipe.variants)}"
        )
        records = []
        order = sorted(self.recipe.variants, key=lambda v: v != "llm2llm")  # one_shot reads llm2llm's counts
        try:
            for seed in self.recipe.seeds:
                for variant in order:
                    records += self.run_variant(seed, variant)
        finally:
            if self._teacher_lm is not None:
                self._teacher_lm.close()
        results = {
            "kind": "flan-builder LLM2LLM run",
            "task": spec.name,
            "task_kind": self.fmt.kind,
            "recipe": self.recipe.to_json(),
            "teacher": teacher_identity(self.recipe),
            "records": records,
            "wall_time_s_this_invocation": round(time.perf_counter() - started, 1),
        }
        from flan_builder.atomic import atomic_directory
        from flan_builder.llm2llm.report import write_report

        with atomic_directory(self.run.out, overwrite=self.run.overwrite) as tmp:
            write_report(results, tmp)
            for seed in self.recipe.seeds:  # every iteration's data, verdicts and predictions
                for variant in self.recipe.variants:
                    shutil.copytree(
                        self.work / f"seed{seed}" / variant, tmp / "iterations" / f"seed{seed}" / variant
                    )
            if (self.work / "teacher_cache.jsonl").is_file():
                shutil.copy(self.work / "teacher_cache.jsonl", tmp)
        shutil.rmtree(self.work, ignore_errors=True)
        self.say(f"wrote {self.run.out}/report.md, report.png, results.json")
        return results


def _reasons(verdicts: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in verdicts:
        if v["verdict"] != "ok":
            reason = reason_category(v["verdict"])
            counts[reason] = counts.get(reason, 0) + 1
    return counts


def _loop_settings(recipe: Llm2llmRecipe) -> dict[str, Any]:
    """What must not change between a run and its --resume (more seeds or iterations may be added)."""
    data = recipe.to_json()
    return {
        k: data[k]
        for k in (
            "task",
            "seed_size",
            "per_wrong",
            "dedup_threshold",
            "templates",
            "with_options",
            "eval_split",
            "max_test_rows",
            "student",
            "teacher",
            "show_student_answer",
        )
    }


def run_llm2llm(run: Llm2llmRun) -> dict[str, Any]:
    """The whole loop for every seed and variant; returns the results the report was written from."""
    return Loop(run).run_all()


def show_prompt(recipe: Llm2llmRecipe) -> str:
    """The teacher prompt of the first seed example of the first seed, as the teacher would get it."""
    loop = Loop(Llm2llmRun(recipe, Path("unused")))
    rows, _ = loop.seed_rows(recipe.seeds[0])
    example = loop.examples(rows, [0], {0: "(the student's wrong answer)"})[0]
    return loop.writer.render(example)
