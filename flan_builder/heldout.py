"""FLAN's held-out split rules: which tasks train and which are the unseen cluster.

- The held-out cluster leaves training whole.
- Its siblings leave training too: NLI <-> paraphrase (a paraphrase pair is
  near-entailment), reading comprehension <-> reading comprehension with commonsense.
  Siblings are data: ``siblings:`` in ``templates/<cluster>/_cluster.yaml``.
- A dataset that sits in more than one cluster leaves training when any of its
  clusters is held out (or is a sibling of the held-out one).
- ``num_train_clusters``: FLAN's number-of-clusters ablation (section 4.1) keeps the first N
  training clusters in decreasing order of their number of training tasks (ties by name).
- Two datasets made from the same source text (``shares_source_with:`` in a spec: WNLI and
  WSC) may sit in different clusters; the build's content check (``flan_builder.contamination``)
  finds the training rows that hold held-out text and, by default, drops them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from flan_builder.errors import FlanError
from flan_builder.specs import Registry, TaskSpec

NO_HELDOUT = "none"


@dataclass
class SplitPlan:
    """Which tasks go to the train split, which to the held-out split, and why others do not."""

    heldout: str | None
    blocked_clusters: list[str]
    train_tasks: list[TaskSpec]
    heldout_tasks: list[TaskSpec]
    excluded: dict[str, str] = field(default_factory=dict)  # task -> reason it is not trained on
    # training task -> held-out tasks declared to share its source text (rows checked by content)
    shares_source: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "heldout_cluster": self.heldout,
            "blocked_clusters": self.blocked_clusters,
            "train_tasks": [t.name for t in self.train_tasks],
            "train_clusters": cluster_order(self.train_tasks),  # most training tasks first
            "heldout_tasks": [t.name for t in self.heldout_tasks],
            "excluded_from_train": self.excluded,
            "shares_source_with_heldout": self.shares_source,
        }


def cluster_order(train: list[TaskSpec]) -> list[str]:
    """Training clusters by decreasing number of training tasks, ties by name (FLAN 4.1's order)."""
    counts = Counter(spec.cluster for spec in train)
    return sorted(counts, key=lambda cluster: (-counts[cluster], cluster))


def _first_clusters(
    train: list[TaskSpec], count: int, heldout: str | None, excluded: dict[str, str]
) -> list[TaskSpec]:
    order = cluster_order(train)
    if count < 1 or count > len(order):
        held = f"holding out {heldout}" if heldout else "holding out nothing"
        raise FlanError(f"--num-train-clusters {count}: {held}, {len(order)} clusters train "
                        f"({', '.join(order)}); give 1 to {len(order)}")
    kept = set(order[:count])
    for spec in train:
        if spec.cluster not in kept:
            excluded[spec.name] = f"not among the first {count} training clusters (--num-train-clusters)"
    return [spec for spec in train if spec.cluster in kept]


def plan_split(
    registry: Registry,
    heldout: str | None,
    *,
    train_clusters: list[str] | None = None,
    tasks: list[str] | None = None,
    with_clusters: list[str] | None = None,
    eval_only: bool = False,
    num_train_clusters: int | None = None,
) -> SplitPlan:
    """Apply the held-out rules to every task in the registry.

    Opt-in tasks (the tabular cluster) train only when their cluster is in ``with_clusters``
    or the task is named in ``tasks``. ``eval_only``: nothing trains; the held-out split holds
    the held-out cluster's tasks (those named in ``tasks``, when given).
    """
    if eval_only and heldout in (None, NO_HELDOUT):
        raise FlanError("--eval-only needs --heldout CLUSTER: the cluster whose tasks are evaluated")
    if heldout in (None, NO_HELDOUT):
        heldout = None
    else:
        registry.check_cluster(heldout)
    blocked = set()
    if heldout is not None:
        # Only siblings that exist here: the rule matters once a registry has both.
        blocked = {heldout} | registry.siblings(heldout)
    if train_clusters:
        for cluster in train_clusters:
            registry.check_cluster(cluster)
        bad = sorted(set(train_clusters) & blocked)
        if bad:
            raise FlanError(f"--train-clusters names {', '.join(bad)}, which the held-out rules "
                            f"remove when holding out {heldout}; drop it from --train-clusters")
    for cluster in with_clusters or []:
        registry.check_cluster(cluster)
    wanted = set(tasks) if tasks else None
    if wanted:
        for name in wanted:
            registry.task(name)

    train: list[TaskSpec] = []
    excluded: dict[str, str] = {}
    for spec in registry.tasks.values():
        hit = [c for c in spec.clusters if c in blocked]
        if hit:
            if spec.cluster == heldout:
                excluded[spec.name] = "in the held-out cluster"
            elif heldout in spec.clusters:
                excluded[spec.name] = f"also in the held-out cluster {heldout}"
            else:
                excluded[spec.name] = f"in {hit[0]}, a sibling of the held-out cluster {heldout}"
            continue
        if wanted is not None and spec.name not in wanted:
            excluded[spec.name] = "not in --tasks"
            continue
        # a task named in --tasks is asked for already
        if registry.is_opt_in(spec) and wanted is None and not set(spec.clusters) & set(with_clusters or ()):
            excluded[spec.name] = f"opt-in cluster {spec.cluster}; add --with {spec.cluster} to train on it"
            continue
        if train_clusters and not set(spec.clusters) & set(train_clusters):
            excluded[spec.name] = "not in --train-clusters"
            continue
        if "train" not in spec.source.splits:
            excluded[spec.name] = "no train split (evaluation-only dataset)"
            continue
        train.append(spec)
    evaluated = [] if heldout is None else [
        s for s in registry.in_cluster(heldout) if "eval" in s.source.splits
    ]
    if heldout is not None and not evaluated:
        raise FlanError(f"held-out cluster {heldout} has no task with an evaluation split")
    if eval_only:
        excluded.update({spec.name: "--eval-only" for spec in train})
        train = []
        evaluated = [s for s in evaluated if wanted is None or s.name in wanted]
        if not evaluated:
            raise FlanError(f"--eval-only: no task of cluster {heldout} with an evaluation split is "
                            "named in --tasks")
    elif wanted is not None and not train:  # would write an empty train split and say nothing
        reasons = "; ".join(f"{name}: {excluded.get(name, 'not trainable')}" for name in sorted(wanted))
        raise FlanError(f"--tasks leaves nothing to train on ({reasons}); name a task that trains, "
                        "hold out another cluster, or pass --eval-only to build only the held-out split")
    if num_train_clusters is not None:
        train = _first_clusters(train, num_train_clusters, heldout, excluded)
    if not train and heldout is None:
        raise FlanError("no task is left for training; check --tasks / --train-clusters")
    evaluated_names = {s.name for s in evaluated}
    shared = {s.name: sorted(registry.shares_source(s.name) & evaluated_names) for s in train}
    return SplitPlan(heldout, sorted(blocked), train, evaluated, excluded,
                     {name: held for name, held in shared.items() if held})
