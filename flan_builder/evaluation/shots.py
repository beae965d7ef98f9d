"""k-shot prompts for ``flan eval --shots K``: exemplars from the held-out task's own train split.

A build's held-out split is zero-shot, and no held-out task is trained on. Asked for K shots,
each held-out row gets K exemplars drawn from its task's *train* split -- seeded by the build's
seed, the task and the row, so every model, template and OPTIONS setting sees the same exemplar
rows -- rendered with the row's own template and laid out by that template's few-shot pattern
(``flan_builder.fewshot``: exemplars end with the example separator, ``"\\n\\n\\n"`` by default).
An exemplar is never the query's own content (same ``source_hash``). Between input and target
sits the evaluation's separator (the build's ``"\\n\\n"`` unless ``--separator``) unless the
template's pattern names its own delimiter. There is no token budget here: K is exact.

A task whose spec declares no train split (glue_qnli, ...) is evaluated zero-shot, with a
warning, and its records say ``shots_used: 0``.

``--shots-from mixture`` draws the exemplars from the built dataset's own *training mixture*
instead (the rows a tuned model was trained on: other clusters' tasks, each already rendered with
its template) -- in-context learning given the same data as tuning, as the PEFT survey and T-Few
compare them. Each exemplar is laid out by its own template's few-shot pattern; rows that are
themselves few-shot (``flan build --formats fs_*``) are not drawn.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from flan_builder.errors import FlanError
from flan_builder.fewshot import FewShotPattern, pattern_for
from flan_builder.manifest import row_hash
from flan_builder.mixing import task_rng

# Where exemplars come from: the held-out task's own train split, or the build's training mixture.
SHOT_SOURCES = ("task", "mixture")


class ShotMaker:
    """Turns one (task, template) group of held-out rows into k-shot prompts."""

    def __init__(self, manifest: dict[str, Any], shots: int, source: str = "task",
                 data: Path | None = None) -> None:
        from flan_builder.specs import load_registry

        if source not in SHOT_SOURCES or (source == "mixture" and data is None):
            raise ValueError(f"shots from {source!r} (data {data})")
        config = manifest.get("config") or {}
        self.shots = shots
        self.source, self.data = source, data
        self._mixture: tuple[Any, list[int]] | None = None
        self.seed = int(manifest.get("seed", 0))
        self.build_separator = manifest.get("separator", "\n\n")
        folders = config.get("templates_dir")
        self.registry = load_registry([Path(f) for f in folders] if isinstance(folders, list)
                                      else Path(folders) if folders else None)
        self._recorded_data_dir = config.get("data_dir")
        self._train: dict[str, Any] = {}
        self._renderers: dict[str, Any] = {}
        self._hashes: dict[str, dict[int, str]] = {}
        self.zero_shot: dict[str, str] = {}  # task -> why it was evaluated zero-shot

    def _data_dir(self, task: str) -> Path | None:
        from flan_builder.sources import resolve_data_dir

        recorded = self._recorded_data_dir
        if recorded and Path(recorded).is_dir():
            return Path(recorded)
        found = resolve_data_dir(None)  # $FLAN_DATA_DIR, else the Hub
        if recorded and found is None:
            raise FlanError(f"--shots: task {task}'s exemplars come from its train split, and the build "
                            f"read rows from {recorded}, which is not here; set FLAN_DATA_DIR to that mirror")
        return found

    def _train_rows(self, task: str) -> Any:
        if task not in self._train:
            from flan_builder.sources import load_split
            from flan_builder.templating import TaskRenderer

            spec = self.registry.task(task)
            if "train" not in spec.source.splits:
                self._train[task] = None
                self.zero_shot[task] = "no train split"
                print(f"flan eval: warning: task {task} has no train split to draw --shots exemplars "
                      f"from (its spec declares: {', '.join(spec.source.splits)}); evaluating it zero-shot",
                      file=sys.stderr)
            else:
                self._train[task] = load_split(spec, "train", self._data_dir(task))
                self._renderers[task] = TaskRenderer(spec, with_options=True, separator=self.build_separator)
                self._hashes[task] = {}
        return self._train[task]

    def _draw(self, task: str, train: Any, query: dict[str, Any]) -> list[int]:
        """K distinct train rows for one held-out row, none with the query's content."""
        spec = self.registry.task(task)
        hashes = self._hashes[task]
        rng = task_rng(self.seed, task, f"eval-shots/{query['source_index']}")
        order = rng.sample(range(len(train)), min(len(train), self.shots + 8))
        chosen = []
        for index in order:
            if index not in hashes:
                row = train.take([index])[0]
                hashes[index] = row_hash({k: row[k] for k in spec.fields})
            if hashes[index] != query["source_hash"]:
                chosen.append(index)
            if len(chosen) == self.shots:
                break
        return chosen

    def prompts(self, task: str, template_id: str, rows: list[dict[str, Any]], use_options: bool,
                separator: str) -> tuple[list[dict[str, Any]], str, int]:
        """(rows with k-shot prompts, the separator before each option, shots per prompt)."""
        if self.source == "mixture":
            return self._mixture_prompts(task, template_id, rows, use_options, separator)
        train = self._train_rows(task)
        if train is None:
            return rows, separator, 0
        spec = self.registry.task(task)
        template = spec.template(template_id)
        template_index = spec.templates.index(template)
        pattern = pattern_for(template)
        renderer = self._renderers[task]
        shaped, tail, shots = [], separator, self.shots
        for row in rows:
            blocks, indices = [], self._draw(task, train, row)
            for index, example_row in zip(indices, train.take(indices), strict=True):
                example = renderer.render(example_row, template_index, split=train.split, row_index=index)
                blocks.append(pattern.exemplar(example.prompt if use_options else example.input,
                                               example.target, separator))
            head, tail = pattern.query(row["prompt"] if use_options else row["input"], separator)
            text = "".join(blocks) + head
            shaped.append({**row, "prompt": text, "input": text, "exemplar_indices": indices})
            shots = min(shots, len(indices))
        return shaped, tail, shots

    # -- exemplars from the training mixture -----------------------------------------------------

    def _mixture_rows(self) -> tuple[Any, list[int]]:
        """The built train split and the indices of its zero-shot rows (the ones that can be exemplars)."""
        if self._mixture is None:
            from datasets import load_from_disk

            built = load_from_disk(str(self.data))
            train = built["train"] if "train" in built else None
            if train is None or len(train) == 0:
                raise FlanError(f"--shots-from mixture: {self.data} has no training rows to draw exemplars "
                                "from (built with --eval-only?); use --shots-from task")
            if "format" in train.column_names:
                pool = [i for i, fmt in enumerate(train["format"]) if not fmt or fmt.startswith("zs_")]
            else:
                pool = list(range(len(train)))
            if len(pool) < self.shots:
                raise FlanError(f"--shots {self.shots}: {self.data}'s training mixture has only {len(pool)} "
                                "zero-shot rows to draw exemplars from; use fewer shots")
            self._mixture = (train, pool)
        return self._mixture

    def _pattern(self, task: str, template_id: str) -> FewShotPattern:
        """A training row's own template's pattern; FLAN's default where the template is not known here."""
        try:
            return pattern_for(self.registry.task(task).template(template_id))
        except (FlanError, KeyError, ValueError):
            return FewShotPattern()

    def _mixture_prompts(self, task: str, template_id: str, rows: list[dict[str, Any]], use_options: bool,
                         separator: str) -> tuple[list[dict[str, Any]], str, int]:
        train, pool = self._mixture_rows()
        pattern = pattern_for(self.registry.task(task).template(template_id))
        shaped, tail, shots = [], separator, self.shots
        for row in rows:
            # seeded by the held-out row alone: every model, template and OPTIONS setting sees the same rows
            rng = task_rng(self.seed, task, f"eval-shots-mixture/{row['source_index']}")
            picks = [pool[p] for p in rng.sample(range(len(pool)), min(len(pool), self.shots + 8))]
            picked = train.select(picks)
            indices, blocks = [], []
            for index, example in zip(picks, picked, strict=True):
                if example["source_hash"] == row["source_hash"]:  # never the query's own content
                    continue
                text = example["prompt"] if use_options else example["input"]
                if not isinstance(text, str):
                    raise FlanError(f"--shots-from mixture: {self.data} was built --as messages; its "
                                    "training rows are not plain prompts. Rebuild it without --as messages")
                blocks.append(self._pattern(example["task"], example["template_id"])
                              .exemplar(text, example["target"], separator))
                indices.append(index)
                if len(indices) == self.shots:
                    break
            head, tail = pattern.query(row["prompt"] if use_options else row["input"], separator)
            text = "".join(blocks) + head
            shaped.append({**row, "prompt": text, "input": text, "exemplar_indices": indices})
            shots = min(shots, len(indices))
        return shaped, tail, shots
