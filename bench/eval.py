"""Rank-classification benchmark: shared-prefix scoring against one full forward per option.

Same model, same held-out rows, same batches (rows sorted by length, ``--batch-size``
rows per batch), in this one process:
  * baseline: every (prompt, option) pair is its own sequence in a padded batch, one
    full forward pass, every position projected through the LM head (what a plain
    loglikelihood loop does);
  * flan-builder: each prompt runs once, its key/value cache is copied to its options,
    and only the scored positions go through the LM head.
Rows/s per task (grouped by the number of options), and the largest difference between
the two methods' log-likelihoods.

    .venv/bin/python bench/eval.py --data build/heldout-nli --rows 64
    .venv/bin/python bench/eval.py --data build/heldout-commonsense --rows 48
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from datasets import load_from_disk

from flan_builder.lm.scoring import encode_row, score_full_sequences, score_shared_prefix
from flan_builder.models import load_model, load_tokenizer, resolve_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="build/heldout-nli")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=64, help="rows per task")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    source = resolve_model(args.model)
    tokenizer = load_tokenizer(source)
    model = load_model(source, dtype=torch.float32).eval()
    heldout = load_from_disk(args.data)["heldout"]
    by_task: dict[str, list] = defaultdict(list)
    for row in heldout:
        if row["options"] and len(by_task[row["task"]]) < args.rows:
            by_task[row["task"]].append(row)
    print(f"{args.model}, {torch.get_num_threads()} CPU threads, batch {args.batch_size} rows, "
          f"{args.rows} rows per task")
    print("| task | options | rows | full forward per option, rows/s | shared prefix, rows/s | speed-up "
          "| max abs diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for task, rows in by_task.items():
        encoded = sorted((encode_row(tokenizer, r["prompt"], r["options"], "\n\n") for r in rows),
                         key=lambda e: len(e.prompt), reverse=True)
        batches = [encoded[i: i + args.batch_size] for i in range(0, len(encoded), args.batch_size)]
        score_shared_prefix(model, batches[0][:2], tokenizer.pad_token_id)  # warm-up
        timings, results = {}, {}
        for name, fn in (("full", score_full_sequences), ("shared", score_shared_prefix)):
            start = time.perf_counter()
            results[name] = [s for batch in batches for s in fn(model, batch, tokenizer.pad_token_id)]
            timings[name] = time.perf_counter() - start
        diff = max(abs(a - b) for ra, rb in zip(results["full"], results["shared"], strict=True)
                   for a, b in zip(ra, rb, strict=True))
        n_options = sorted({len(r["options"]) for r in rows})
        print(f"| {task} | {'/'.join(map(str, n_options))} | {len(rows)} | {len(rows) / timings['full']:.1f} "
              f"| {len(rows) / timings['shared']:.1f} | {timings['full'] / timings['shared']:.2f}x "
              f"| {diff:.1e} |")


if __name__ == "__main__":
    main()
