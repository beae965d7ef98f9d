"""Builder benchmarks: rendering throughput and an end-to-end ``flan build``.

Rendering is measured three ways on the same rows and templates, in this one process:
  * per-call compilation: what promptsource's ``Template.apply`` does on every example
    (compile the answer-choices template and the ``input ||| target`` template, render);
  * bare precompiled jinja2: ``Template.render`` of precompiled input and target
    templates on a context prepared beforehand (no options, answer or suffix work);
  * flan-builder: ``TaskRenderer.render`` doing all of its work per example.
Figures are printed as ratios against the baselines measured in the same run.

The end-to-end build (all 32 datasets, ``--heldout nli``) runs in a child process per
setting, which reports its own wall time and peak RSS.

    .venv/bin/python bench/build.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jinja2

from flan_builder.sources import load_split
from flan_builder.specs import load_registry
from flan_builder.templating import TaskRenderer

ROWS_PER_TASK = 400
PER_CALL_ROWS_PER_TASK = 40  # the slow baseline: fewer rows, same mix of templates


def _promptsource_apply(env: jinja2.Environment, choices_src: str | None, src: str, row: dict) -> list[str]:
    """Per-call compilation, as promptsource's Template.apply does it."""
    ctx = dict(row)
    if choices_src is not None:
        rendered = env.from_string(choices_src).render(**ctx)
        ctx["answer_choices"] = [c.strip() for c in rendered.split("|||")]
    return [part.strip() for part in env.from_string(src).render(**ctx).split("|||")]


def _choices_source(spec) -> str | None:
    if not spec.has_options:
        return None
    if isinstance(spec.options, tuple):
        return " ||| ".join(spec.options)
    return "{{ (" + spec.options + ") | join(' ||| ') }}"


def render_benchmark(data_dir: Path) -> dict:
    registry = load_registry()
    env = jinja2.Environment()
    workloads = []
    for spec in registry.tasks.values():
        role = "train" if "train" in spec.source.splits else "eval"
        split = load_split(spec, role, data_dir)
        rows = split.take(range(min(len(split), ROWS_PER_TASK)))
        renderer = TaskRenderer(spec)
        workloads.append((spec, rows, renderer))

    # flan-builder: everything per example
    count, start = 0, time.perf_counter()
    for _, rows, renderer in workloads:
        n = len(renderer.templates)
        for i, row in enumerate(rows):
            renderer.render(row, i % n)
            count += 1
    ours = count / (time.perf_counter() - start)

    # bare precompiled jinja2 on prepared contexts
    prepared = []
    for spec, rows, renderer in workloads:
        pairs = []
        for t in spec.templates:
            target = t.target or ("{{ correct_choice }}" if spec.has_options else "{{ references[0] }}")
            pairs.append((env.from_string(t.input), env.from_string(target)))
        contexts = [renderer.context(row) for row in rows]
        prepared.append((pairs, contexts))
    count, start = 0, time.perf_counter()
    for pairs, contexts in prepared:
        for i, ctx in enumerate(contexts):
            source, target = pairs[i % len(pairs)]
            source.render(ctx)
            target.render(ctx)
            count += 1
    bare = count / (time.perf_counter() - start)

    # per-call compilation (promptsource), on the same prepared contexts as the bare baseline
    count, start = 0, time.perf_counter()
    for (spec, _, _), (_, contexts) in zip(workloads, prepared, strict=True):
        choices_src = _choices_source(spec)
        n = len(spec.templates)
        for i, ctx in enumerate(contexts[:PER_CALL_ROWS_PER_TASK]):
            t = spec.templates[i % n]
            target = t.target or ("{{ correct_choice }}" if spec.has_options else "{{ references[0] }}")
            _promptsource_apply(env, choices_src, t.input + " ||| " + target, ctx)
            count += 1
    per_call = count / (time.perf_counter() - start)
    return {
        "tasks": len(workloads),
        "examples_per_s": {"flan_builder": round(ours), "bare_jinja2": round(bare),
                           "per_call_compile": round(per_call)},
        "speedup_vs_per_call_compile": round(ours / per_call, 1),
        "bare_over_ours": round(bare / ours, 2),
    }


def build_benchmark(data_dir: Path, num_procs: list[int]) -> list[dict]:
    results = []
    for num_proc in num_procs:
        with tempfile.TemporaryDirectory() as tmp:
            child = (
                "import json, resource, sys, time\n"
                "from pathlib import Path\n"
                "start = time.perf_counter()\n"
                "from flan_builder.build import BuildConfig, build\n"
                f"m = build(BuildConfig(heldout='nli', out=Path({tmp!r}) / 'out', "
                f"data_dir=Path({str(data_dir)!r}), num_proc={num_proc})).manifest\n"
                "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
                "peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
                "print(json.dumps({'wall_s': round(time.perf_counter() - start, 2), "
                "'peak_rss_mib': round(max(peak, peak_children) / 1024), "
                "'train_rows': m['counts']['train']['total'], "
                "'heldout_rows': m['counts']['heldout']['total'], "
                "'content_hash': m['content_hash']['all'][:16]}))\n"
            )
            out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                                 check=True).stdout.strip().splitlines()[-1]
            results.append({"num_proc": num_proc, **json.loads(out)})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    render = render_benchmark(args.data_dir)
    print("rendering (all 32 tasks, one template per example, cycling through templates):")
    for name, value in render["examples_per_s"].items():
        print(f"  {name:18s} {value:>9,} examples/s")
    print(f"  flan-builder vs per-call compilation: {render['speedup_vs_per_call_compile']}x faster")
    print(f"  bare jinja2 / flan-builder:           {render['bare_over_ours']}x")
    print("end-to-end `flan build --heldout nli` (all 32 datasets):")
    builds = build_benchmark(args.data_dir, args.num_proc)
    for row in builds:
        print(f"  num_proc={row['num_proc']}: {row['wall_s']} s wall (process start to finish), "
              f"peak RSS {row['peak_rss_mib']} MiB, train {row['train_rows']:,} / heldout "
              f"{row['heldout_rows']:,} rows, hash {row['content_hash']}")
    print(json.dumps({"render": render, "build": builds}))


if __name__ == "__main__":
    main()
