"""Check flan eval's rank classification against lm-evaluation-harness on the same model.

``--rte`` (the end-to-end check): lm-eval's own RTE task against ``flan eval``.
lm-eval's prompt (super_glue/rte: ``{{premise}}\\nQuestion: {{hypothesis}} True or False?\\nAnswer:``,
choices True / False, target delimiter " ") is written as a flan task spec, built with
``flan build`` from the local mirror, and scored by ``flan eval --no-options --separator " "
--log-samples``. lm-eval runs its installed sglue_rte YAML, pointed at the same mirror file,
with acc and acc_norm, through ``simple_evaluate`` with log_samples. The script prints both
tools' acc / acc_norm and compares every row's option log-likelihoods and predictions.

``--data`` (request level): a built dataset's held-out rows. lm-eval's ``HFLM.loglikelihood``
gets its multiple-choice requests (prompt, separator + option); flan's scorer gets the same
rows with that separator, which it keeps in the context. With ``--separator " "`` the two
must agree; with the default "\\n\\n" they differ by design (lm-eval scores the separator's
tokens too, and its acc_norm then favours the longest option).

lm-eval is not a dependency of the project: install it into the environment first.

    .venv/bin/pip install lm_eval==0.4.13
    .venv/bin/python bench/lm_eval_compare.py --rte --data-dir ../shared/data
    .venv/bin/python bench/lm_eval_compare.py --data build/heldout-nli --rows 200 --separator " "
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from flan_builder.evaluation.cli import separator
from flan_builder.models import load_model, load_tokenizer, materialise_model, resolve_model

REPO = Path(__file__).resolve().parent.parent
# lm-eval's super_glue/rte prompt as a flan task spec (the flan eval side of --rte)
RTE_SPEC = """\
task: super_glue_rte
cluster: nli
type: classification
source:
  hub_id: aps/super_glue
  config: rte
  mirror: super_glue_rte
  splits: {train: train, eval: validation}
license: unknown
fields: [premise, hypothesis, label]
options: ["True", "False"]
answer: label
templates:
  - id: lm_eval_rte
    input: "{{ premise }}\\nQuestion: {{ hypothesis }} True or False?\\nAnswer:"
"""


def _lm_eval_model(name: str):
    from lm_eval.models.huggingface import HFLM

    source = materialise_model(resolve_model(name))
    model = load_model(source, dtype=torch.float32).eval()
    return HFLM(pretrained=model, tokenizer=load_tokenizer(source), batch_size=8)


def _flan(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "flan_builder.cli", *args], check=True, cwd=REPO,
                   env={**os.environ, "TQDM_DISABLE": "1"})


def compare_rte(model: str, data_dir: Path, work: Path) -> None:
    """flan eval and lm-eval's own task on every RTE validation row; acc, acc_norm, row by row."""
    import lm_eval
    import yaml

    templates = work / "templates"
    (templates / "nli").mkdir(parents=True)
    (templates / "nli" / "super_glue_rte.yaml").write_text(RTE_SPEC, encoding="utf-8")
    (templates / "nli" / "_cluster.yaml").write_text((REPO / "templates/nli/_cluster.yaml").read_text())
    # a built dataset needs a non-empty train split (load_from_disk cannot read an empty one)
    (templates / "sentiment").symlink_to(REPO / "templates" / "sentiment")
    _flan("build", "--templates-dir", str(templates), "--no-shipped-templates", "--heldout", "nli",
          "--data-dir", str(data_dir), "--out", str(work / "build"))
    t0 = time.perf_counter()
    # only this template, whatever else a build might hold out
    _flan("eval", "--model", model, "--data", str(work / "build"), "--out", str(work / "report"),
          "--task", "super_glue_rte", "--template", "lm_eval_rte", "--no-options", "--separator", " ",
          "--log-samples")
    flan_seconds = time.perf_counter() - t0
    flan = json.loads((work / "report" / "results.json").read_text())
    record = flan["records"][0]
    ours = {s["source_index"]: s for s in map(json.loads, (work / "report" / record["samples"])
                                                .read_text(encoding="utf-8").splitlines())}

    config = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks/super_glue/rte/default.yaml").read_text())
    config.pop("tag", None)
    mirror = {split: str(data_dir / "super_glue_rte" / f"{split}.jsonl") for split in ("train", "validation")}
    config.update(task="rte_local_mirror", dataset_path="json", dataset_name=None,
                  dataset_kwargs={"data_files": mirror},
                  metric_list=[{"metric": "acc"}, {"metric": "acc_norm"}])
    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(model=_lm_eval_model(model), tasks=[config], log_samples=True,
                                  bootstrap_iters=0)
    lm_eval_seconds = time.perf_counter() - t0
    theirs = {s["doc_id"]: s for s in out["samples"]["rte_local_mirror"]}
    scores = out["results"]["rte_local_mirror"]

    assert ours.keys() == theirs.keys(), "the two tools scored different rows"
    diff, same_context, same_acc, same_norm = 0.0, 0, 0, 0
    for i, mine in ours.items():
        other = theirs[i]
        lls = [r[0] for r in other["filtered_resps"]]
        diff = max(diff, *(abs(o["logprob"] - ll) for o, ll in zip(mine["options"], lls, strict=True)))
        same_context += other["arguments"][0][0] == mine["prompt"]
        same_acc += mine["acc"] == other["acc"]
        same_norm += mine["acc_norm"] == other["acc_norm"]
    n = len(ours)
    acc, acc_norm = record["scores"]["acc"] / 100, record["scores"]["acc_norm"] / 100
    print(f"{n} RTE validation rows, lm-eval's prompt, {model} float32: flan eval acc {acc:.4f} "
          f"acc_norm {acc_norm:.4f}; lm-eval acc {scores['acc,none']:.4f} "
          f"acc_norm {scores['acc_norm,none']:.4f}")
    print(f"same context text on {same_context}/{n} rows; max |Δ log-likelihood| {diff:.2e}; "
          f"acc agrees on {same_acc}/{n} rows, acc_norm on {same_norm}/{n}; "
          f"flan eval {flan_seconds:.0f} s (with model load), lm-eval {lm_eval_seconds:.0f} s")


def compare_requests(model: str, data: Path, rows_wanted: int, separator: str) -> None:
    """lm-eval's HFLM.loglikelihood on (prompt, separator + option) against flan's scorer."""
    from datasets import load_from_disk
    from lm_eval.api.instance import Instance

    from flan_builder.evaluation.scorers import score_classification
    from flan_builder.lm.hf import HFLM

    lm = _lm_eval_model(model)
    rows = [r for r in load_from_disk(str(data))["heldout"] if r["options"]]
    if rows_wanted:  # a spread of tasks and templates: every k-th row
        rows = rows[:: max(len(rows) // rows_wanted, 1)][:rows_wanted]
    samples: list[dict] = []
    score_classification(HFLM(lm.model, lm.tokenizer, model), rows, separator, True, samples)
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=(r["prompt"], separator + o), idx=k)
                for r in rows for k, o in enumerate(r["options"])]
    theirs_flat = [ll for ll, _ in lm.loglikelihood(requests)]
    diff, acc_same, norm_same, start = 0.0, 0, 0, 0
    correct = {"flan acc": 0, "lm-eval acc": 0, "flan acc_norm": 0, "lm-eval acc_norm": 0}
    for row, sample in zip(rows, samples, strict=True):
        theirs = theirs_flat[start: start + len(row["options"])]
        start += len(row["options"])
        diff = max(diff, *(abs(o["logprob"] - t) for o, t in zip(sample["options"], theirs, strict=True)))
        # lm-eval's acc_norm divides by len(choice)
        norm = [t / max(len(o), 1) for t, o in zip(theirs, row["options"], strict=True)]
        pred, pred_norm = theirs.index(max(theirs)), norm.index(max(norm))
        acc_same += pred == sample["pred"]
        norm_same += pred_norm == sample["pred_norm"]
        gold = row["answer_index"]
        correct["flan acc"] += sample["acc"]
        correct["lm-eval acc"] += pred == gold
        correct["flan acc_norm"] += sample["acc_norm"]
        correct["lm-eval acc_norm"] += pred_norm == gold
    tasks = sorted({r["task"] for r in rows})
    print(f"{len(rows)} rows ({', '.join(tasks)}), {len(theirs_flat)} options, separator {separator!r}: "
          f"max |Δ log-likelihood| = {diff:.2e}; acc predictions agree on {acc_same}/{len(rows)}, "
          f"acc_norm on {norm_same}/{len(rows)}")
    print("; ".join(f"{name} {100 * n / len(rows):.2f}" for name, n in correct.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rte", action="store_true", help="lm-eval's RTE task against flan eval, end to end")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"),
                        help="the local mirror (--rte)")
    parser.add_argument("--data", default="build/heldout-nli", help="a built dataset (request level)")
    parser.add_argument("--rows", type=int, default=40, help="rows (request level; 0: all)")
    parser.add_argument("--separator", default=" ", type=separator,
                        help="request level: between prompt and option (backslash escapes, as flan eval)")
    args = parser.parse_args()
    if args.rte:
        with tempfile.TemporaryDirectory() as work:
            compare_rte(args.model, Path(args.data_dir).resolve(), Path(work))
    else:
        compare_requests(args.model, Path(args.data), args.rows, args.separator)


if __name__ == "__main__":
    main()
