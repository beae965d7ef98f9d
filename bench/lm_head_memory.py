"""Peak memory and time of the training loss head: whole logits against chunks of positions.

One micro-batch's completion positions go through the LM head (forward and backward), once as
the compact head did before 2026-11-30 (all positions' float32 logits, their log-softmax and
the entropy at once, autograd keeping what it needs) and once through
``flan_builder.training.chunked_head`` (a chunk of positions at a time). Each measurement runs
in its own process (RSS never shrinks back), alternating whole / chunked per repeat so load on
the shared machine hits both alike. The figures are the peak RSS over the process's baseline
(inputs and weights already allocated) and the wall time of forward + backward.

    .venv/bin/python bench/lm_head_memory.py                      # SmolLM2 and Gemma 3 sizes
    .venv/bin/python bench/lm_head_memory.py --positions 894 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

# (vocabulary, hidden width) of the two offline models
SHAPES = {"smollm2-135m": (49_152, 576), "gemma3-270m": (262_144, 640)}


def rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(way: str, model: str, positions: int, head_trains: bool) -> dict:
    import torch

    from flan_builder.training.chunked_head import completion_log_probs, whole_log_probs

    torch.manual_seed(0)
    vocabulary, width = SHAPES[model]
    head = torch.nn.Linear(width, vocabulary, bias=False)
    head.weight.requires_grad_(head_trains)
    hidden = torch.randn(positions, width, requires_grad=True)
    targets = torch.randint(vocabulary, (positions,))
    if head_trains:
        head.weight.grad = torch.zeros_like(head.weight)  # the optimizer's buffer exists in training
    base = rss_peak_mib()
    start = time.perf_counter()
    if way == "whole":
        picked, _, _ = whole_log_probs(head(hidden), targets)  # the compact head before chunks
    else:
        picked, _, _ = completion_log_probs(hidden, head, targets)
    (-picked.sum() / positions).backward()
    seconds = time.perf_counter() - start
    return {"way": way, "model": model, "positions": positions, "head_trains": head_trains,
            "extra_peak_mib": round(rss_peak_mib() - base, 1), "seconds": round(seconds, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=894,
                        help="completion positions in the micro-batch (894: the README nli run's "
                             "heaviest, 2 rows of 447)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        way, model, positions, trains = args.child
        print(json.dumps(child(way, model, int(positions), trains == "1")))
        return
    results = []
    for model in SHAPES:
        for head_trains in (False, True):
            for _ in range(args.repeats):
                for way in ("whole", "chunked"):
                    out = subprocess.run([sys.executable, __file__, "--child", way, model,
                                          str(args.positions), "1" if head_trains else "0"],
                                         capture_output=True, text=True, check=True).stdout
                    results.append(json.loads(out.strip().splitlines()[-1]))
                    print(results[-1], flush=True)
    print("\n| model | head | way | extra peak RSS MiB | forward + backward s |\n|---|---|---|---:|---:|")
    for model in SHAPES:
        for head_trains in (False, True):
            for way in ("whole", "chunked"):
                runs = [r for r in results if (r["model"], r["head_trains"], r["way"]) ==
                        (model, head_trains, way)]
                peaks = " / ".join(f"{r['extra_peak_mib']:,.0f}" for r in runs)
                times = " / ".join(f"{r['seconds']:.2f}" for r in runs)
                print(f"| {model} | {'trained' if head_trains else 'frozen'} | {way} | {peaks} | {times} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
