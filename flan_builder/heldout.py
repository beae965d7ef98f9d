"""FLAN's held-out split rules: which tasks train and which are the unseen cluster.

- The held-out cluster leaves training whole.
- Its siblings leave training too: NLI <-> paraphrase (a paraphrase pair is
  near-entailment), reading comprehension <-> reading comprehension with commonsense.
  Siblings are data: ``siblings:`` in ``templates/<cluster>/_cluster.yaml``.
- A dataset that sits in more than one cluster leaves training when any of its
  clusters is held out (or is a sibling of the held-out one).
- Two datasets made from the same source text (``shares_source_with:`` in a spec: WNLI and
  WSC) may sit in different clusters; the build's content check (``flan_builder.contamination``)
  finds the training rows that hold held-out text and, by default, drops them.
"""

from __future__ import annotations

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
            "heldout_tasks": [t.name for t in self.heldout_tasks],
            "excluded_from_train": self.excluded,
            "shares_source_with_heldout": self.shares_source,
        }


def plan_split(
    registry: Registry,
    heldout: str | None,
    *,
    train_clusters: list[str] | None = None,
    tasks: list[str] | None = None,
    with_clusters: list[str] | None = None,
    eval_only: bool = False,
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
    if not train and heldout is None:
        raise FlanError("no task is left for training; check --tasks / --train-clusters")
    evaluated_names = {s.name for s in evaluated}
    shared = {s.name: sorted(registry.shares_source(s.name) & evaluated_names) for s in train}
    return SplitPlan(heldout, sorted(blocked), train, evaluated, excluded,
                     {name: held for name, held in shared.items() if held})
