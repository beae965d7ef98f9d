"""Builder benchmarks: rendering throughput and an end-to-end ``flan build``.

Rendering is measured four ways on the same rows and templates, in this one process:
  * per-call compilation: what promptsource's ``Template.apply`` does on every example
    (compile the answer-choices template and the ``input ||| target`` template, render);
  * bare precompiled jinja2: ``Template.render`` of precompiled input and target
    templates on a context prepared beforehand (no options, answer or suffix work);
  * flan-builder: ``TaskRenderer.render`` doing all of its work per example, one call each;
  * flan-builder batched: ``TaskRenderer.render_rows``, one call for a task's rows (what
    ``render_shard`` does in a build), the same work per example.
The methods take turns task by task (``--render-rounds`` times over all tasks), so a change in
the machine's load reaches all of them alike. Figures are printed as ratios against the
baselines measured in the same run.

The end-to-end build (all 32 datasets, ``--heldout nli``) runs in a child process per
setting, which reports its own wall time and peak RSS.

    .venv/bin/python bench/build.py --data-dir ../shared/data

``--large`` measures builds of a million rows and more instead (issue 21: the build streams in
bounded memory), each ``flan build`` in its own child process, which reports its wall time, its
own peak RSS and its children's; this process samples the whole process tree's PSS (shared pages
counted once) every 0.2 s:

* the 967,753-row build (``--heldout none --all-templates --rate-cap 1000000``), with this
  checkout's code and, interleaved, with the code of ``--baseline CHECKOUT`` (e.g. a
  ``git worktree`` of the commit before the streamed build);
* the same build over synthetic mirrors in which every train split is repeated ``F`` times
  (each copy its own source row), for each ``--scale F``: peak memory as the output grows.

    nice -n 19 .venv/bin/python bench/build.py --large --baseline /tmp/flan-old \
        --templates-dir /tmp/flan-old/templates --scale 1 2 3 4 4.55 --num-proc 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


def render_benchmark(data_dir: Path, rounds: int = 3) -> dict:
    registry = load_registry()
    env = jinja2.Environment()
    workloads = []
    for spec in registry.tasks.values():
        role = "train" if "train" in spec.source.splits else "eval"
        split = load_split(spec, role, data_dir)
        rows = split.take(range(min(len(split), ROWS_PER_TASK)))
        renderer = TaskRenderer(spec)
        n = len(spec.templates)
        pairs, sources = [], []
        for t in spec.templates:
            target = t.target or ("{{ correct_choice }}" if spec.has_options else "{{ references[0] }}")
            pairs.append((env.from_string(t.input), env.from_string(target)))
            sources.append(t.input + " ||| " + target)
        contexts = [renderer.context(row) for row in rows]
        workloads.append((spec, rows, renderer, [(i % n,) for i in range(len(rows))], pairs, sources,
                          contexts))

    def ours(rows, renderer, **_):  # flan-builder: everything per example, one call each
        n = len(renderer.templates)
        for i, row in enumerate(rows):
            renderer.render(row, i % n)
        return len(rows)

    def batched(rows, renderer, chosen, **_):  # one call for the task's rows
        return len(renderer.render_rows(rows, chosen))

    def bare(pairs, contexts, **_):  # bare precompiled jinja2 on prepared contexts
        for i, ctx in enumerate(contexts):
            source, target = pairs[i % len(pairs)]
            source.render(ctx)
            target.render(ctx)
        return len(contexts)

    def per_call(spec, sources, contexts, **_):  # promptsource, on the bare baseline's contexts
        choices_src = _choices_source(spec)
        for i, ctx in enumerate(contexts[:PER_CALL_ROWS_PER_TASK]):
            _promptsource_apply(env, choices_src, sources[i % len(sources)], ctx)
        return min(len(contexts), PER_CALL_ROWS_PER_TASK)

    methods = {"flan_builder": ours, "flan_builder_batched": batched, "bare_jinja2": bare,
               "per_call_compile": per_call}
    counts = dict.fromkeys(methods, 0)
    seconds = dict.fromkeys(methods, 0.0)
    for _ in range(rounds):
        for spec, rows, renderer, chosen, pairs, sources, contexts in workloads:
            for name, method in methods.items():  # taking turns, task by task
                start = time.perf_counter()
                counts[name] += method(spec=spec, rows=rows, renderer=renderer, chosen=chosen,
                                       pairs=pairs, sources=sources, contexts=contexts)
                seconds[name] += time.perf_counter() - start
    rate = {name: counts[name] / seconds[name] for name in methods}
    return {
        "tasks": len(workloads),
        "rounds": rounds,
        "examples_per_s": {name: round(value) for name, value in rate.items()},
        "speedup_vs_per_call_compile": round(rate["flan_builder"] / rate["per_call_compile"], 1),
        "batched_speedup_vs_per_call_compile":
            round(rate["flan_builder_batched"] / rate["per_call_compile"], 1),
        "bare_over_ours": round(rate["bare_jinja2"] / rate["flan_builder"], 2),
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


LARGE = ["--heldout", "none", "--all-templates", "--rate-cap", "1000000"]  # 967,753 rows (issue 21)
REPO = Path(__file__).resolve().parent.parent
_CHILD = """
import json, resource, sys, time
start = time.perf_counter()
from flan_builder.cli import main
code = main(json.loads(sys.argv[1]))
print(json.dumps({"code": code, "wall_s": round(time.perf_counter() - start, 1),
                  "self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                  "children_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024}))
"""


def _tree_pss(pid: int) -> int:
    """PSS of a process and its descendants, in bytes (0 once it is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def measure_build(args: list[str], out: Path, code: Path | None = None) -> dict:
    """One ``flan build ARGS --out OUT`` in a child process, with the code of checkout ``code``
    (default: this one); its figures, its rows and content hash. The output is removed after."""
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    if code is not None:
        env["PYTHONPATH"] = str(code)
    command = [sys.executable, "-c", _CHILD, json.dumps(["build", *args, "--out", str(out)])]
    proc = subprocess.Popen(command, cwd=code or REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak_pss = 0
    while proc.poll() is None:
        peak_pss = max(peak_pss, _tree_pss(proc.pid))
        time.sleep(0.2)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"build failed ({' '.join(args)}):\n{stderr[-2000:]}")
    figures = json.loads(stdout.strip().splitlines()[-1])
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    shutil.rmtree(out)
    return {**figures, "tree_pss_mib": peak_pss >> 20,
            "rows": sum(c["total"] for c in manifest["counts"].values()),
            "content_hash": manifest["content_hash"]["all"][:16]}


def synthetic_mirror(data_dir: Path, dest: Path, factor: float) -> Path:
    """``data_dir`` with every train split repeated to ``factor`` times its rows (whole copies, then
    the first rows again); each copy is a row of its own (its own index in the split)."""
    for split in sorted(data_dir.glob("*/train.jsonl")):
        lines = split.read_text(encoding="utf-8").splitlines(keepends=True)
        wanted = int(len(lines) * factor)
        target = dest / split.parent.name / "train.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", encoding="utf-8") as handle:
            for start in range(0, wanted, len(lines)):
                handle.writelines(lines[: min(len(lines), wanted - start)])
    return dest


def large_benchmark(args: argparse.Namespace) -> dict:
    common = ["--data-dir", str(args.data_dir.resolve())]
    if args.templates_dir is not None:
        common += ["--templates-dir", str(args.templates_dir.resolve()), "--no-shipped-templates"]
    results: dict = {"baseline": [], "streamed": [], "scale": []}
    if args.work_dir is not None:
        Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        out = Path(tmp) / "out"
        for _ in range(args.repeats):  # interleaved: load on the machine hits both alike
            if args.baseline is not None:
                results["baseline"].append(measure_build([*LARGE, *common], out, args.baseline.resolve()))
                print("baseline", results["baseline"][-1], flush=True)
            results["streamed"].append(measure_build([*LARGE, *common, "--num-proc", "1"], out))
            print("streamed", results["streamed"][-1], flush=True)
        for factor in args.scale:
            mirror = synthetic_mirror(args.data_dir, Path(tmp) / f"x{factor}", factor)
            scaled = [*LARGE, *common[2:], "--data-dir", str(mirror), "--num-proc", str(args.num_proc[-1])]
            results["scale"].append({"factor": factor, "num_proc": args.num_proc[-1],
                                     **measure_build(scaled, out)})
            print("scale", results["scale"][-1], flush=True)
            shutil.rmtree(mirror)
    return results


def print_large(results: dict) -> None:
    base, ours = results["baseline"], results["streamed"]
    if ours:
        print("the 967,753-row build (--heldout none --all-templates --rate-cap 1000000), one process:")
        for name, runs in (("in-memory (baseline)", base), ("streamed", ours)):
            for run in runs:
                print(f"  {name:21s} {run['wall_s']:7.1f} s  peak RSS {run['self_mib']:,} MiB "
                      f"(children {run['children_mib']:,}, tree PSS {run['tree_pss_mib']:,})  "
                      f"{run['rows']:,} rows  hash {run['content_hash']}")
        if base:
            wall = sum(r["wall_s"] for r in ours) / sum(r["wall_s"] for r in base)
            rss = max(r["self_mib"] for r in ours) / max(r["self_mib"] for r in base)
            print(f"  streamed / in-memory: wall {wall:.2f}x, peak RSS {rss:.2f}x")
    if results["scale"]:
        print("synthetic mirrors (every train split repeated F times), same build:")
        first = results["scale"][0]
        for run in results["scale"]:
            ratio = run["tree_pss_mib"] / first["tree_pss_mib"]
            print(f"  F={run['factor']:<5} {run['rows']:>10,} rows  {run['wall_s']:7.1f} s  "
                  f"peak RSS {run['self_mib']:,} MiB (workers {run['children_mib']:,}, tree PSS "
                  f"{run['tree_pss_mib']:,}; {ratio:.2f}x F={first['factor']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--render-rounds", type=int, default=3, help="passes over all tasks, "
                        "the rendering methods taking turns task by task")
    parser.add_argument("--large", action="store_true", help="the million-row builds instead")
    parser.add_argument("--baseline", type=Path, help="--large: a checkout whose build to compare")
    parser.add_argument("--templates-dir", type=Path, help="--large: only these task specs")
    parser.add_argument("--repeats", type=int, default=1, help="--large: interleaved pairs")
    parser.add_argument("--scale", type=float, nargs="*", default=[],
                        help="--large: synthetic mirrors with train splits repeated F times")
    parser.add_argument("--work-dir", type=Path, help="--large: where outputs and mirrors go")
    args = parser.parse_args()
    if args.large:
        results = large_benchmark(args)
        print_large(results)
        print(json.dumps(results))
        return
    render = render_benchmark(args.data_dir, args.render_rounds)
    print(f"rendering (all {render['tasks']} tasks, one template per example, cycling through templates):")
    for name, value in render["examples_per_s"].items():
        print(f"  {name:21s} {value:>9,} examples/s")
    print(f"  flan-builder vs per-call compilation: {render['speedup_vs_per_call_compile']}x faster "
          f"(batched: {render['batched_speedup_vs_per_call_compile']}x)")
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
