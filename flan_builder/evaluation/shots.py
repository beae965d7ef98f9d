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
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from flan_builder.errors import FlanError
from flan_builder.fewshot import pattern_for
from flan_builder.manifest import row_hash
from flan_builder.mixing import task_rng


class ShotMaker:
    """Turns one (task, template) group of held-out rows into k-shot prompts."""

    def __init__(self, manifest: dict[str, Any], shots: int) -> None:
        from flan_builder.specs import load_registry

        config = manifest.get("config") or {}
        self.shots = shots
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
