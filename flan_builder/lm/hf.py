"""A transformers causal LM (optionally with a PEFT adapter) behind the LM interface.

Names resolve as everywhere else (an alias, a GGUF file, a model folder, a Hub id), and a
run directory from ``flan train`` loads onto its base model from its ``run.json``: LoRA
and IA3 are merged into the weights, so scoring runs at the base model's speed;
virtual-token adapters (prompt / prefix tuning, P-tuning) stay PEFT models.

Scoring: requests that share a context are encoded together the lm-evaluation-harness way,
merged into a token trie and scored with one pass over it; only each continuation's own
tokens are scored (``lm.scoring``). Generation: left-padded
batches of similar length through ``model.generate``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flan_builder.errors import FlanError
from flan_builder.lm.base import LM, GenerationRequest, LoglikelihoodRequest, cut_at_stop
from flan_builder.models import ModelSource, load_model, load_tokenizer, materialise_model, resolve_model

TOKEN_BUDGET = 8192  # tokens per batch (rows x longest row) for batch_size 'auto'
MAX_AUTO_ROWS = 256  # rows per batch for 'auto' (bounds the batching search, not the memory)
# What one more scoring forward pass costs, in padded positions. On a CPU each pass reads all the
# weights again: smollm2-135m took 83 ms for 8 tokens and 138 ms for 32 on one core, about 25
# positions' worth of time. A GPU pays far more per call than per position (a guess, not measured
# here: no GPU).
BATCH_COST = {"cpu": 32, "cuda": 2048}


def base_of_run(folder: Path) -> ModelSource | None:
    """The base model a ``flan train`` run (or a bare PEFT adapter folder) was tuned from."""
    run = folder / "run.json"
    if run.is_file():
        source = json.loads(run.read_text(encoding="utf-8"))["model_source"]
        return ModelSource(source["name"], source["kind"], source["location"], source.get("gguf_file"))
    adapter = folder / "adapter_config.json"
    if adapter.is_file():
        base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if not base:
            raise FlanError(f"{folder}: adapter_config.json names no base model")
        return resolve_model(base)
    return None


def check_model(name: str) -> None:
    """Fail before any work when a model cannot be found (loading comes later, one at a time)."""
    folder = Path(name)
    if not (folder.is_dir() and base_of_run(folder) is not None):
        resolve_model(name)


def tokenizer_source(name: str) -> ModelSource:
    """Where the tokenizer of a model name (or a run directory) comes from."""
    folder = Path(name)
    base = base_of_run(folder) if folder.is_dir() else None
    return base if base is not None and (folder / "adapter_config.json").is_file() else resolve_model(name)


def _license(source: ModelSource) -> str | None:
    """The name of the (base) model's licence, where known, for reports."""
    terms = source.license
    return terms.name if terms else None


def load_for_eval(name: str) -> tuple[Any, Any, dict[str, Any]]:
    """(model in eval mode, tokenizer, description) for a model name or a run directory."""
    import torch

    folder = Path(name)
    base = base_of_run(folder) if folder.is_dir() else None
    info: dict[str, Any] = {"name": name}
    if base is None:
        source = materialise_model(resolve_model(name))  # an alias: its saved folder, described as such
        model, tokenizer = load_model(source, dtype=torch.float32), load_tokenizer(source)
        info.update(kind=source.kind, source=source.describe(), method=None, license=_license(source))
    elif (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        base = materialise_model(base)
        model = load_model(base, dtype=torch.float32)
        tokenizer = load_tokenizer(base)
        try:
            model = PeftModel.from_pretrained(model, str(folder))
        except Exception as exc:  # noqa: BLE001 - any load failure is the user's input
            raise FlanError(f"could not load the adapter in {folder} onto {base.name}: "
                            f"{str(exc).splitlines()[0]}") from None
        method = model.peft_config["default"].peft_type.value.lower()
        if not model.peft_config["default"].is_prompt_learning:
            model = model.merge_and_unload()  # same outputs, base-model speed
        info.update(kind="adapter", source=f"{folder} on {base.describe()}", method=method,
                    license=_license(base))
    else:  # a full fine-tune: a whole model directory
        source = resolve_model(str(folder))
        model, tokenizer = load_model(source, dtype=torch.float32), load_tokenizer(source)
        info.update(kind="run", source=str(folder), method="full", license=_license(base))
    model.eval()
    if torch.cuda.is_available():  # scoring and generation run where the model is; the GPU if present
        model.to("cuda")
    return model, tokenizer, info


def batches(items: list[Any], size: int | str, length: Callable[[Any], int],
            batch_cost: int | None = None) -> list[list[Any]]:
    """Sort by length (longest first: an out-of-memory shows at once) and cut into batches of at most
    ``size`` items ('auto': at most TOKEN_BUDGET padded tokens).

    Without ``batch_cost`` every batch is filled (generation: each batch pays a whole decoding loop).
    With it, the cuts minimise padded positions plus ``batch_cost`` per batch, by dynamic programming
    over the sorted order: cutting RTE's 277 rows every 16 pads a batch of 277-token rows down to 167
    (10% of all positions would be padding), while equal-length rows still fill whole batches."""
    ordered = sorted(items, key=length, reverse=True)
    if batch_cost is None:
        if size != "auto":
            return [ordered[i: i + int(size)] for i in range(0, len(ordered), int(size))]
        filled, current = [], []
        for item in ordered:
            if current and (len(current) + 1) * length(current[0]) > TOKEN_BUDGET:
                filled.append(current)
                current = []
            current.append(item)
        return filled + ([current] if current else [])
    lengths = [length(item) for item in ordered]
    most = MAX_AUTO_ROWS if size == "auto" else int(size)
    best = [0] * (len(ordered) + 1)  # best[i]: the cost of cutting ordered[:i]
    start = [0] * (len(ordered) + 1)  # where the last batch of that cut begins
    for i in range(1, len(ordered) + 1):
        best[i], start[i] = best[i - 1] + lengths[i - 1] + batch_cost, i - 1
        for j in range(i - 2, max(i - most, 0) - 1, -1):  # batch ordered[j:i]; its longest is ordered[j]
            if size == "auto" and (i - j) * lengths[j] > TOKEN_BUDGET:
                break  # earlier rows are only longer
            cost = best[j] + (i - j) * lengths[j] + batch_cost
            if cost < best[i]:
                best[i], start[i] = cost, j
    out, end = [], len(ordered)
    while end:
        out.append(ordered[start[end]: end])
        end = start[end]
    return out[::-1]


class HFLM(LM):
    """A loaded transformers model and its tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, name: str, info: dict[str, Any] | None = None,
                 batch_size: int | str = "auto") -> None:
        super().__init__(name, info)
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    @classmethod
    def load(cls, name: str, batch_size: int | str = "auto") -> HFLM:
        """Load a model name or a ``flan train`` run directory for scoring and generation."""
        model, tokenizer, info = load_for_eval(name)
        return cls(model, tokenizer, name, info, batch_size)

    # -- scoring ------------------------------------------------------------------------------

    def encode(self, requests: list[LoglikelihoodRequest]) -> tuple[list[Any], list[tuple[int, int]]]:
        """Requests grouped by context into encoded rows, and where each request landed (row, option).
        Requests of one ``group`` (several contexts) become one row where the scorer runs a trie."""
        from flan_builder.lm.scoring import encode_row, merge_rows, tree_supported

        merge = tree_supported(self.model)
        by_context: dict[tuple[Any, str], list[int]] = {}
        for i, request in enumerate(requests):
            by_context.setdefault((request.group if merge else None, request.context), []).append(i)
        parts: dict[Any, list[tuple[Any, list[int]]]] = {}
        for (group, context), members in by_context.items():
            row = encode_row(self.tokenizer, context, [requests[i].continuation for i in members], "")
            key = ("context", context) if group is None else ("group", group)
            parts.setdefault(key, []).append((row, members))
        rows, where = [], [(0, 0)] * len(requests)
        for pieces in parts.values():
            k = 0
            for _, members in pieces:
                for i in members:
                    where[i] = (len(rows), k)
                    k += 1
            rows.append(pieces[0][0] if len(pieces) == 1 else merge_rows([row for row, _ in pieces]))
        return rows, where

    def row_batches(self, rows: list[Any]) -> list[list[int]]:
        """Indices of encoded rows, batched by what each costs the scorer (little padding)."""
        from flan_builder.lm.scoring import row_length

        cost = BATCH_COST.get(self.model.device.type, BATCH_COST["cuda"])
        return batches(list(range(len(rows))), self.batch_size, lambda i: row_length(self.model, rows[i]),
                       cost)

    def score_requests(self, requests: list[LoglikelihoodRequest],
                       score_batch: Callable[[list[Any]], list[list[float]]]) -> list[float]:
        """Encode with this model's tokenizer, batch by prompt length, and score each batch of rows
        with ``score_batch`` (encoded rows -> option scores per row); results in request order."""
        rows, where = self.encode(requests)
        scores: list[list[float]] = [[] for _ in rows]
        for batch in self.row_batches(rows):
            for i, row_scores in zip(batch, score_batch([rows[i] for i in batch]), strict=True):
                scores[i] = row_scores
        return [scores[r][k] for r, k in where]

    def continuation_tokens(self, requests: list[LoglikelihoodRequest]) -> list[list[str]]:
        """The tokens each request's score sums over, as text (tokenization only, no model call)."""
        rows, where = self.encode(requests)
        return [[self.tokenizer.decode([t]) for t in rows[r].options[k]] for r, k in where]

    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[float]:
        from flan_builder.lm.scoring import score_rows

        return self.score_requests(requests, lambda rows: score_rows(self.model, rows,
                                                                     self.tokenizer.pad_token_id))

    # -- generation ---------------------------------------------------------------------------

    def generate(self, requests: list[GenerationRequest],
                 processors: Callable[[Any], list[Any]] | None = None) -> list[str]:
        """Continuations in request order; ``processors(inputs)`` adds logits processors per batch."""
        import torch

        answers: dict[int, str] = {}
        self.tokenizer.padding_side = "left"
        by_setting: dict[tuple[Any, ...], list[int]] = {}
        for i, request in enumerate(requests):
            by_setting.setdefault(request.sampling_key, []).append(i)
        for members in by_setting.values():
            first = requests[members[0]]
            sample = first.temperature > 0
            settings: dict[str, Any] = {"max_new_tokens": first.max_new_tokens, "do_sample": sample,
                                        "pad_token_id": self.tokenizer.pad_token_id}
            if sample:
                settings.update(temperature=first.temperature, top_p=first.top_p, top_k=None)
            if first.stop:
                settings.update(stop_strings=list(first.stop), tokenizer=self.tokenizer)
            prompts = {i: self.chat_prompt(requests[i].prompt) if first.chat else requests[i].prompt
                       for i in members}
            for batch in batches(members, self.batch_size, lambda i, p=prompts: len(p[i])):
                # a chat template already carries the special tokens it needs
                inputs = self.tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True,
                                        add_special_tokens=not first.chat).to(self.model.device)
                if processors is not None:
                    settings["logits_processor"] = processors(inputs)
                with torch.no_grad():
                    out = self.model.generate(**inputs, **settings)
                new_tokens = out[:, inputs["input_ids"].shape[1]:]
                texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                self.usage["requests"] += len(batch)
                self.usage["prompt_tokens"] += int(inputs["attention_mask"].sum())
                self.usage["completion_tokens"] += int((new_tokens != self.tokenizer.pad_token_id).sum())
                for i, text in zip(batch, texts, strict=True):
                    answers[i] = cut_at_stop(text, first.stop).strip()
        return [answers[i] for i in range(len(requests))]

    def chat_prompt(self, message: str) -> str:
        """A user message in the model's chat template, ready for the assistant's answer."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise FlanError(f"{self.name} has no chat template, so it cannot take chat messages; use an "
                            "instruction-tuned model (e.g. smollm2-135m) or a plain prompt")
        return self.tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                                  add_generation_prompt=True)

    def close(self) -> None:
        del self.model
