"""Check our rank classification against lm-evaluation-harness on the same requests.

For each held-out row, the prompt is the context and ``separator + option`` the
continuation, exactly the requests an lm-eval multiple-choice task would make. Both
sides score the same loaded model; the script prints the largest log-likelihood
difference and whether acc / acc_norm agree row by row. lm-eval is not a dependency of
the project: install it into the environment first.

    .venv/bin/pip install lm_eval
    .venv/bin/python bench/lm_eval_compare.py --data build/heldout-nli --rows 40
"""

from __future__ import annotations

import argparse

import torch
from datasets import load_from_disk

from flan_builder.lm.scoring import encode_row, score_rows
from flan_builder.models import load_model, load_tokenizer, resolve_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="build/heldout-nli")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=40)
    args = parser.parse_args()

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    source = resolve_model(args.model)
    tokenizer = load_tokenizer(source)
    model = load_model(source, dtype=torch.float32).eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8)
    rows = [r for r in load_from_disk(args.data)["heldout"] if r["options"]]
    # a spread of tasks and templates: every k-th row
    rows = rows[:: max(len(rows) // args.rows, 1)][: args.rows]
    separator = "\n\n"
    ours = [s for r in rows
            for s in score_rows(model, [encode_row(tokenizer, r["prompt"], r["options"], separator)],
                                tokenizer.pad_token_id)]
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=(r["prompt"], separator + o),
                         idx=k) for r in rows for k, o in enumerate(r["options"])]
    theirs_flat = [ll for ll, _ in lm.loglikelihood(requests)]
    diff, acc_same, norm_same, start = 0.0, 0, 0, 0
    correct = {"ours acc": 0, "lm-eval acc": 0, "ours acc_norm": 0, "lm-eval acc_norm": 0}
    for row, mine in zip(rows, ours, strict=True):
        theirs = theirs_flat[start: start + len(mine)]
        start += len(mine)
        diff = max(diff, *(abs(a - b) for a, b in zip(mine, theirs, strict=True)))
        lengths = [max(len(o), 1) for o in row["options"]]  # lm-eval: len(choice)

        def pick(scores, norm=False, lengths=lengths):
            values = [s / n for s, n in zip(scores, lengths, strict=True)] if norm else scores
            return max(range(len(values)), key=values.__getitem__)

        acc_same += pick(mine) == pick(theirs)
        norm_same += pick(mine, True) == pick(theirs, True)
        gold = row["answer_index"]
        correct["ours acc"] += pick(mine) == gold
        correct["lm-eval acc"] += pick(theirs) == gold
        correct["ours acc_norm"] += pick(mine, True) == gold
        correct["lm-eval acc_norm"] += pick(theirs, True) == gold
    tasks = sorted({r["task"] for r in rows})
    print(f"{len(rows)} rows ({', '.join(tasks)}), {len(theirs_flat)} options: max |Δ log-likelihood| = "
          f"{diff:.2e}; acc predictions agree on {acc_same}/{len(rows)}, acc_norm on {norm_same}/{len(rows)}")
    print("; ".join(f"{name} {100 * n / len(rows):.2f}" for name, n in correct.items()))


if __name__ == "__main__":
    main()
