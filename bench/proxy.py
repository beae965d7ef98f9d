"""Proxy-tuning cost: base alone vs base + alpha x (expert - anti-expert), in one process.

Generation: the same prompts greedy-decoded in one left-padded batch by the base alone and by
the proxy-tuned triple (token level: the expert and anti-expert run inside a LogitsProcessor,
each with its own key/value cache). Scoring: the same held-out rows rank-classified by the
base alone, the token-level proxy (three shared-prefix passes, logits combined at the
option positions) and the sequence-level proxy (three independent scorings). Runs are
interleaved, the fastest of ``--rounds`` is kept. With three equal-size models the floor is
3.0x the base's time (each model does the base's work once); the ratio says how close.

    .venv/bin/python bench/proxy.py --data build/heldout-nli --rows 32 --new-tokens 32
"""

from __future__ import annotations

import argparse
import time

import torch
from datasets import load_from_disk

from flan_builder.evaluation.scorers import score_classification
from flan_builder.lm.base import GenerationRequest
from flan_builder.lm.hf import HFLM
from flan_builder.lm.proxy import ProxyLM, ProxySpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="build/heldout-nli")
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--expert", default="smollm2-135m")
    parser.add_argument("--anti", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=32, help="held-out rows scored (one template)")
    parser.add_argument("--prompts", type=int, default=8, help="prompts generated in one batch")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    rows = [r for r in load_from_disk(args.data)["heldout"] if r["options"]]
    first_template = rows[0]["template_id"]
    rows = [r for r in rows if r["template_id"] == first_template][: args.rows]
    prompts = [r["prompt"] for r in rows[: args.prompts]]
    base = HFLM.load(args.base, batch_size=8)
    token = ProxyLM(ProxySpec(args.base, args.expert, args.anti, 1.0), base,
                    HFLM.load(args.expert, 8), HFLM.load(args.anti, 8))
    sequence = ProxyLM(ProxySpec(args.base, args.expert, args.anti, 1.0, "sequence"), base, token.expert,
                       token.anti)
    # no early stop: every run generates exactly new_tokens tokens per prompt
    requests = [GenerationRequest(p, args.new_tokens) for p in prompts]
    base.model.generation_config.eos_token_id = None

    def gen(lm):
        return lm.generate(requests)

    def score(lm):
        return score_classification(lm, rows, "\n\n", True)

    gen(base)  # warm-up
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, fn, lm in (("generate base", gen, base), ("generate proxy (token)", gen, token),
                             ("score base", score, base), ("score proxy (token)", score, token),
                             ("score proxy (sequence)", score, sequence)):
            start = time.perf_counter()
            fn(lm)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    tokens = len(prompts) * args.new_tokens
    print(f"{args.base} steered by {args.expert} - {args.anti}; {torch.get_num_threads()} CPU threads; "
          f"{len(prompts)} prompts x {args.new_tokens} new tokens; {len(rows)} rows scored "
          f"({rows[0]['task']}, {first_template}); fastest of {args.rounds} interleaved rounds")
    print("| run | seconds | throughput | time vs base | floor (3 models) |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds in best.items():
        kind = name.split()[0]
        rate = f"{tokens / seconds:.1f} tokens/s" if kind == "generate" else \
            f"{len(rows) / seconds:.2f} rows/s"
        ratio = seconds / best[f"{kind} base"]
        print(f"| {name} | {seconds:.2f} | {rate} | {ratio:.2f}x | {'-' if 'base' in name else '3.00x'} |")


if __name__ == "__main__":
    main()
