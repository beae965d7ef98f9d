"""Evaluation throughput: flan's scorer against the model's own limit and against lm-evaluation-harness.

Issue 21, item 6. One process, one loaded model (float32), the same torch threads for every
measurement, identical work on each side:

  ceiling    the transformer body alone (no LM head, no scoring, plain causal attention, no
             mask) over exactly the tokens flan's scorer runs: each row's context once and the
             option tokens that predict a scored token, each distinct prefix once (the row's
             token trie), batched as flan batches them (16 rows, sorted by length, right-padded).
             Tokens/s counts real tokens, not padding.
  flan       flan's LM interface on lm-eval's own requests (the (context, continuation) pairs
             its task produced, as its samples log them), batch 16: what ``HFLM.loglikelihood``
             (the call ``flan eval`` makes for every multiple-choice group) does, step by step:
             encode every request (tokenize, build the tries), cut batches, ``score_rows`` each.
  lm-eval    ``simple_evaluate`` on its installed task YAML pointed at the local mirror, with
             ``HFLM(pretrained=<the same model>, batch_size=16)``; its scoring time is its
             ``loglikelihood`` call, timed around it (tokenization included, as on flan's side).
  flan eval  (rte, piqa, siqa) the task's lm-eval prompt written as a flan task spec, built with
             ``flan build --eval-only`` from the same mirror and scored by ``flan eval --no-options
             --separator " " --batch-size 16 --log-samples`` in this process; rows/s from the
             record's scoring seconds. COPA is not: lm-eval's COPA continuation starts with two
             spaces (its choices carry one, its target delimiter adds another) and a flan build
             strips options, so only the LM interface gets lm-eval's exact COPA requests.

``ceiling speed / lm-eval`` bounds what any exact scorer could reach on these batches: the body
alone over the trie's tokens, with no LM head at all (which an exact log-likelihood cannot skip: its
normaliser sums over the whole vocabulary at every predicting position).

The machine is shared, so every figure is the fastest of --repeat tries (load elsewhere only adds
time): the ceiling and flan batch by batch, taking turns on each batch (flan's time adds encoding
every request once); lm-eval as whole runs (its first inside simple_evaluate, the others its
loglikelihood on the same requests). flan eval runs once.
Predictions are compared row by row (acc: summed log-likelihood; acc_norm: per character of the
choice, lm-eval's rule), with the largest |difference| between the two tools' log-likelihoods.

lm-eval is not a dependency of the project: install it into the environment first.

    .venv/bin/pip install lm_eval==0.4.13
    nice -n 5 .venv/bin/python bench/eval_throughput.py --data-dir ../shared/data --limit 200
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from lm_eval_compare import RTE_SPEC  # noqa: E402  (bench/ is the script's folder: on sys.path)

from flan_builder.lm.base import LoglikelihoodRequest  # noqa: E402
from flan_builder.lm.hf import HFLM  # noqa: E402
from flan_builder.models import load_model, load_tokenizer, materialise_model, resolve_model  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BATCH = 16


@dataclass
class Task:
    """An lm-eval task, the mirror folder it reads, and (where expressible) its prompt as a flan spec."""

    name: str
    yaml: str  # under lm_eval/tasks
    mirror: str
    spec: str | None  # flan task spec with lm-eval's prompt; None: not expressible (see the docstring)


TASKS = {
    "rte": Task("rte", "super_glue/rte/default.yaml", "super_glue_rte", RTE_SPEC),
    "copa": Task("copa", "super_glue/copa/default.yaml", "super_glue_copa", None),
    "piqa": Task("piqa", "piqa/piqa.yaml", "piqa", """\
task: piqa
cluster: nli
type: multiple_choice
source: {hub_id: baber/piqa, mirror: piqa, splits: {eval: validation}}
license: afl-3.0
fields: [goal, sol1, sol2, label]
options: "[sol1, sol2]"
answer: label
templates:
  - id: lm_eval_piqa
    input: "Question: {{ goal }}\\nAnswer:"
"""),
    "siqa": Task("siqa", "siqa/siqa.yaml", "social_i_qa", """\
task: social_i_qa
cluster: nli
type: multiple_choice
source: {hub_id: lighteval/siqa, mirror: social_i_qa, splits: {eval: validation}}
license: unknown
fields: [context, question, answerA, answerB, answerC, label]
options: "[answerA, answerB, answerC]"
answer: "(label | int) - 1"
templates:
  - id: lm_eval_siqa
    input: "Q: {{ context }} {{ question }}\\nA:"
"""),
}


def lm_eval_config(task: Task, data_dir: Path) -> dict[str, Any]:
    """lm-eval's own task config, reading the local mirror instead of the Hub."""
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    config = load_yaml(Path(lm_eval.__file__).parent / "tasks" / task.yaml)
    config.pop("tag", None)
    files = {split: str(data_dir / task.mirror / f"{split}.jsonl") for split in ("train", "validation")
             if (data_dir / task.mirror / f"{split}.jsonl").is_file()}
    config.update(task=f"{task.name}_local_mirror", dataset_path="json", dataset_name=None,
                  dataset_kwargs={"data_files": files}, validation_split="validation",
                  training_split="train" if "train" in files else None, test_split=None,
                  metric_list=[{"metric": "acc"}, {"metric": "acc_norm"}])
    return config


def run_lm_eval(model: Any, tokenizer: Any, task: Task, data_dir: Path, limit: int | None) -> dict[str, Any]:
    """simple_evaluate on the task; its scoring seconds, requests and per-row log-likelihoods."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM as LmEvalHFLM

    lm = LmEvalHFLM(pretrained=model, tokenizer=tokenizer, batch_size=BATCH)
    spent: list[float] = []
    scorer = lm.loglikelihood

    def timed(requests: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = scorer(requests, *args, **kwargs)
        spent.append(time.perf_counter() - start)
        return out

    lm.loglikelihood = timed
    start = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm, tasks=[lm_eval_config(task, data_dir)], log_samples=True,
                                  bootstrap_iters=0, limit=limit)
    total = time.perf_counter() - start
    name = f"{task.name}_local_mirror"
    samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
    return {"seconds": sum(spent), "total_seconds": total, "samples": samples, "lm": lm, "scorer": scorer,
            "acc": out["results"][name]["acc,none"], "acc_norm": out["results"][name]["acc_norm,none"]}


def lm_eval_again(run: dict[str, Any]) -> float:
    """Seconds for lm-eval's loglikelihood on the same requests again (its tokenization included)."""
    from lm_eval.api.instance import Instance

    instances = [Instance(request_type="loglikelihood", doc={}, arguments=tuple(argument), idx=k)
                 for s in run["samples"] for k, argument in enumerate(s["arguments"])]
    start = time.perf_counter()
    run["scorer"](instances, disable_tqdm=True)
    return time.perf_counter() - start


def requests_of(samples: list[dict[str, Any]]) -> list[LoglikelihoodRequest]:
    """lm-eval's (context, continuation) pairs, in document and choice order."""
    return [LoglikelihoodRequest(*argument) for s in samples for argument in s["arguments"]]


@dataclass
class Paired:
    """The ceiling and flan's scorer on the same batches, each batch timed side by side."""

    real: int  # trie tokens (what the ceiling counts)
    padded: int  # positions run, padding included
    ceiling: float  # seconds: the body alone, plain causal attention, no LM head
    flan: float  # seconds: flan's scoring of the same batches, plus encoding every request once
    encode: float  # seconds of that spent tokenizing and building tries
    scores: list[float]  # flan's log-likelihoods, in request order


def ceiling_and_flan(lm: HFLM, requests: list[LoglikelihoodRequest], repeat: int) -> Paired:
    """Batch by batch, alternately: the body alone over a batch's tries (right-padded; right padding
    never changes a real token's output, so no mask) and flan's scorer on the same rows; each batch's
    fastest of ``repeat`` tries, so a burst of load elsewhere on the machine hits neither side alone."""
    from flan_builder.lm.scoring import score_rows

    start = time.perf_counter()
    rows, where = lm.encode(requests)
    for row in rows:
        row.tree  # noqa: B018 - built here, timed as encoding
    batches = lm.row_batches(rows)
    encode = time.perf_counter() - start
    backbone, pad = lm.model.get_decoder(), lm.tokenizer.pad_token_id
    real = padded = 0
    ceiling_s = flan_s = 0.0
    scores: list[list[float]] = [[] for _ in rows]
    with torch.no_grad():
        for batch in batches:
            trees = [rows[i].tree for i in batch]
            ids = torch.full((len(trees), max(len(t.tokens) for t in trees)), pad)
            for i, tree in enumerate(trees):
                ids[i, : len(tree.tokens)] = torch.tensor(tree.tokens)
            real += sum(len(t.tokens) for t in trees)
            padded += ids.numel()
            body, scorer = [], []
            for _ in range(repeat):
                start = time.perf_counter()
                backbone(input_ids=ids, use_cache=False)
                body.append(time.perf_counter() - start)
                start = time.perf_counter()
                batch_scores = score_rows(lm.model, [rows[i] for i in batch], pad)
                scorer.append(time.perf_counter() - start)
            for i, row_scores in zip(batch, batch_scores, strict=True):
                scores[i] = row_scores
            ceiling_s += min(body)
            flan_s += min(scorer)
    return Paired(real, padded, ceiling_s, flan_s + encode, encode, [scores[r][k] for r, k in where])


def body_pace(model: Any, rows: int = 16, length: int = 80) -> float:
    """Tokens/s of the transformer body on one rectangular batch (after a warm-up pass)."""
    ids = torch.randint(1000, 40000, (rows, length), generator=torch.Generator().manual_seed(0))
    backbone = model.get_decoder()
    with torch.no_grad():
        backbone(input_ids=ids[:2, :16], use_cache=False)
        start = time.perf_counter()
        backbone(input_ids=ids, use_cache=False)
    return ids.numel() / (time.perf_counter() - start)


def cache_path(lm: HFLM, requests: list[LoglikelihoodRequest]) -> float:
    """Seconds for the previous fast path (the context once, its key/value cache copied to each option)
    on the same rows and batches."""
    from flan_builder.lm.scoring import score_shared_prefix

    rows, _ = lm.encode(requests)
    start = time.perf_counter()
    for batch in lm.row_batches(rows):
        score_shared_prefix(lm.model, [rows[i] for i in batch], lm.tokenizer.pad_token_id)
    return time.perf_counter() - start


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def compare(samples: list[dict[str, Any]], flat: list[float], delimiter: str = " ") -> dict[str, Any]:
    """Row by row: max |Δ log-likelihood|, and whether acc and acc_norm predictions agree."""
    diff, same_acc, same_norm, start = 0.0, 0, 0, 0
    for sample in samples:
        theirs = [r[0] for r in sample["filtered_resps"]]
        ours = flat[start: start + len(theirs)]
        start += len(theirs)
        diff = max(diff, *(abs(a - b) for a, b in zip(ours, theirs, strict=True)))
        # lm-eval's acc_norm divides by the choice's characters (the continuation less its delimiter)
        chars = [len(cont) - len(delimiter) for _, cont in sample["arguments"]]
        same_acc += _argmax(ours) == _argmax(theirs)
        same_norm += _argmax([s / n for s, n in zip(ours, chars, strict=True)]) == \
            _argmax([s / n for s, n in zip(theirs, chars, strict=True)])
    return {"diff": diff, "same_acc": same_acc, "same_norm": same_norm, "rows": len(samples)}


def run_flan_eval(model: str, tasks: list[Task], data_dir: Path, limit: int | None, work: Path,
                  lm_eval_runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """flan build + flan eval on the tasks' lm-eval prompts; per task rows/s and agreement with lm-eval."""
    import json

    from flan_builder.evaluation.evaluator import evaluate_models
    from flan_builder.evaluation.suite import EvalConfig

    templates = work / "templates"
    (templates / "nli").mkdir(parents=True)
    (templates / "nli" / "_cluster.yaml").write_text((REPO / "templates/nli/_cluster.yaml").read_text())
    for task in tasks:
        (templates / "nli" / f"{task.mirror}.yaml").write_text(task.spec or "", encoding="utf-8")
    subprocess.run([sys.executable, "-m", "flan_builder.cli", "build", "--templates-dir", str(templates),
                    "--no-shipped-templates", "--heldout", "nli", "--eval-only", "--data-dir", str(data_dir),
                    "--out", str(work / "build")], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    records = []
    for limited in (False, True):  # rte: all 277 rows; the others: --limit
        names = [t.mirror for t in tasks if (t.name != "rte") == limited]
        if names:
            report = work / f"report-{limited}"
            records += evaluate_models(EvalConfig(
                models=[model], data=work / "build", out=report, tasks=names,
                limit=limit if limited else None, options=(False,), batch_size=BATCH, separator=" ",
                log_samples=True))["records"]
            for record in records[-len(names):]:
                record["samples"] = str(report / record["samples"])
    out = {}
    for record in records:
        task = next(t for t in tasks if t.mirror == record["task"])
        ours = [json.loads(line) for line in Path(record["samples"]).read_text().splitlines()]
        theirs = {s["doc_id"]: s for s in lm_eval_runs[task.name]["samples"]}
        flat, matched, flat_same, matched_same = [], [], [], []
        for sample in sorted(ours, key=lambda s: s["source_index"]):
            other = theirs[sample["source_index"]]
            scores = [o["logprob"] for o in sample["options"]]
            flat += scores
            matched.append(other)
            # a flan build strips options (piqa's data has stray spaces lm-eval keeps)
            if [(sample["prompt"], " " + o["option"]) for o in sample["options"]] == \
                    [tuple(a) for a in other["arguments"]]:
                flat_same += scores
                matched_same.append(other)
        everything, same = compare(matched, flat), compare(matched_same, flat_same)
        out[task.name] = {"rows": record["scores"]["n"], "seconds": record["seconds"],
                          "same_text": len(matched_same), "diff_same_text": same["diff"], **everything}
    return out


def _seconds(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--tasks", default="rte,copa,piqa,siqa", help="comma-separated: " + ",".join(TASKS))
    parser.add_argument("--limit", type=int, default=200,
                        help="rows per multi-token task (lm-eval's first N documents); rte runs all 277")
    parser.add_argument("--repeat", type=int, default=2,
                        help="tries: per batch for the ceiling and flan, whole runs for lm-eval")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-flan-eval", action="store_true", help="skip the end-to-end flan eval runs")
    parser.add_argument("--cache-path", action="store_true",
                        help="also time the previous fast path (a key/value cache copy per option)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_dir = Path(args.data_dir).resolve()
    source = materialise_model(resolve_model(args.model))
    model, tokenizer = load_model(source, dtype=torch.float32).eval(), load_tokenizer(source)
    flan = HFLM(model, tokenizer, args.model, batch_size=BATCH)
    print(f"{args.model} float32, {torch.get_num_threads()} torch threads, batch {BATCH}; "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    print(f"body pace on a full 16 x 80 batch (no padding, no mask): {body_pace(model):.0f} tokens/s",
          flush=True)

    tasks = [TASKS[name] for name in args.tasks.split(",")]
    runs: dict[str, dict[str, Any]] = {}
    lines = []
    for task in tasks:
        limit = None if task.name == "rte" else args.limit
        theirs = run_lm_eval(model, tokenizer, task, data_dir, limit)
        runs[task.name] = theirs
        requests = requests_of(theirs["samples"])
        rows = len(theirs["samples"])
        paired = ceiling_and_flan(flan, requests, args.repeat)
        scores = paired.scores
        lm_evals = [theirs["seconds"]] + [lm_eval_again(theirs) for _ in range(args.repeat - 1)]
        caches = [cache_path(flan, requests)] if args.cache_path else []
        same = compare(theirs["samples"], scores)
        # fastest of the tries: load elsewhere only ever adds time
        flan_s, lm_eval_s = paired.flan, min(lm_evals)
        theirs["best_seconds"] = lm_eval_s
        lines.append(" | ".join([
            f"| {task.name}", str(rows), str(len(requests)),
            f"{paired.real:,} ({100 * (paired.padded - paired.real) / paired.padded:.1f}% padding)",
            f"{paired.real / paired.ceiling:.0f} tok/s = {rows / paired.ceiling:.2f} rows/s",
            f"{paired.flan / paired.ceiling:.2f}x", f"{rows / flan_s:.2f}", f"{rows / lm_eval_s:.2f}",
            f"{lm_eval_s / flan_s:.2f}x", f"{lm_eval_s / paired.ceiling:.2f}x", f"{same['diff']:.1e}",
            f"{same['same_acc']}/{rows}, {same['same_norm']}/{rows} |"]))
        previous = f"; previous cache path {_seconds(caches)} s" if caches else ""
        print(f"{task.name}: ceiling {paired.ceiling:.1f} s, flan {paired.flan:.1f} s "
              f"({paired.encode:.2f} s encoding){previous}; lm-eval "
              f"{_seconds(lm_evals)} s scoring ({theirs['total_seconds']:.1f} s simple_evaluate, acc "
              f"{theirs['acc']:.4f} acc_norm {theirs['acc_norm']:.4f}); "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)

    print("\n| task | rows | requests | ceiling tokens | ceiling | flan time / ceiling | flan rows/s "
          "| lm-eval rows/s | flan speed / lm-eval | ceiling speed / lm-eval | max abs Δ loglik "
          "| acc, acc_norm preds agree |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(lines))

    end_to_end = [t for t in tasks if t.spec is not None]
    if end_to_end and not args.no_flan_eval:
        with tempfile.TemporaryDirectory() as work:
            results = run_flan_eval(args.model, end_to_end, data_dir, args.limit, Path(work), runs)
        print("\n| task | rows | flan eval rows/s | lm-eval rows/s | speed ratio | same text "
              "| max abs Δ loglik (same-text rows) | acc, acc_norm preds agree |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, r in results.items():
            n, theirs = r["rows"], runs[name]
            theirs_rate = len(theirs["samples"]) / theirs["best_seconds"]
            print(" | ".join([
                f"| {name}", str(n), f"{n / r['seconds']:.2f}", f"{theirs_rate:.2f}",
                f"{n / r['seconds'] / theirs_rate:.2f}x", f"{r['same_text']}/{n}",
                f"{r['diff_same_text']:.1e}",
                f"{r['same_acc']}/{n}, {r['same_norm']}/{n} |"]))
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
