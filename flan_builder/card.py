"""The dataset card published with a built dataset: a Hub-valid YAML header and a body."""

from __future__ import annotations

from typing import Any

import yaml

from flan_builder.errors import FlanError
from flan_builder.specs import Registry

# Licence identifiers the Hub accepts that our specs use (https://hf.co/docs/hub/repositories-licenses).
HUB_LICENSES = frozenset({
    "apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "afl-3.0", "cc-by-4.0", "cc-by-sa-3.0",
    "cc-by-sa-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "cc-by-nc-nd-4.0", "other", "unknown",
})
NON_COMMERCIAL = frozenset({"cc-by-nc-4.0", "cc-by-nc-sa-4.0", "cc-by-nc-nd-4.0"})


def size_category(n: int) -> str:
    """The Hub's size bucket for ``n`` rows."""
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
              (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")]
    for bound, label in bounds:
        if n < bound:
            return label
    return "n>1T" if n > 10**12 else "100M<n<1B"


def card_metadata(manifest: dict[str, Any], registry: Registry) -> dict[str, Any]:
    """The YAML header: licences of every source, task categories, languages, size."""
    tasks = sorted(manifest["sources"])
    missing = [t for t in tasks if t not in registry.tasks]
    if missing:
        searched = ", ".join(map(str, registry.roots or (registry.root,)))
        raise FlanError(f"the dataset was built from task(s) {', '.join(missing)} that are not in "
                        f"{searched}; pass the --templates-dir it was built with")
    specs = [registry.tasks[t] for t in tasks]
    licenses = sorted({s.license if s.license in HUB_LICENSES else "other" for s in specs})
    categories = sorted({"text-generation"} | {
        category for s in specs for c in s.clusters
        if (category := registry.cluster_info(c).hub_category) is not None
    })
    languages = ["en"] + sorted({
        lang for s in specs if s.cluster == "translation"
        for lang in (s.source.config or "").split("-") if lang and lang != "en"
    })
    total = sum(split["total"] for split in manifest["counts"].values())
    return {
        "pretty_name": _title(manifest),
        "license": licenses,
        "language": languages,
        "task_categories": categories,
        "size_categories": [size_category(total)],
        "tags": ["flan", "instruction-tuning", "flan-builder",
                 *([f"heldout-{manifest['heldout_cluster']}"] if manifest["heldout_cluster"] else [])],
    }


def _title(manifest: dict[str, Any]) -> str:
    heldout = manifest["heldout_cluster"]
    return f"FLAN-style instructions, held-out cluster: {heldout}" if heldout else \
        "FLAN-style instruction mixture"


def render_card(manifest: dict[str, Any], registry: Registry) -> str:
    """The full README.md: YAML header between ``---`` lines, then markdown."""
    meta = card_metadata(manifest, registry)
    header = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip()
    counts = manifest["counts"]
    plan = manifest["split_plan"]
    lines = [f"---\n{header}\n---", "", f"# {meta['pretty_name']}", ""]
    lines += [
        "Built with flan-builder from task specs with Jinja templates "
        "(FLAN's recipe: about ten phrasings per dataset, some of them turning the task around, "
        "an `OPTIONS` suffix for classification).", "",
        f"- **Held-out cluster:** {manifest['heldout_cluster'] or 'none (train-only mixture)'}",
        f"- **Removed from training by the held-out rules:** "
        f"{', '.join(plan['blocked_clusters']) or 'nothing'}",
        "- **Rows:** " + ", ".join(f"{name} {c['total']:,}" for name, c in counts.items()),
        f"- **Format:** {manifest['style']} (columns `prompt`, `completion`, plus `task`, "
        "`cluster`, `template_id`, `inverted`, `options`, `answer_index`, `references`)",
        f"- **OPTIONS suffix:** {'on' if manifest['with_options'] else 'off'}",
        f"- **Content hash (sha256):** `{manifest['content_hash']['all']}`",
        "", "## Tasks", "",
        "| task | cluster | split | rows | templates (inverted) | source | license |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in sorted(manifest["sources"]):
        spec = registry.tasks[name]
        split = "heldout" if name in plan["heldout_tasks"] else "train"
        rows = counts.get(split, {}).get("per_task", {}).get(name, 0)
        template = manifest["templates"].get(name, {})
        source = spec.source.hub_id + (f" / {spec.source.config}" if spec.source.config else "")
        lines.append(f"| {name} | {spec.cluster} | {split} | {rows:,} | "
                     f"{template.get('count', 0)} ({template.get('inverted', 0)}) | {source} | "
                     f"{spec.license} |")
    non_commercial = sorted(n for n in manifest["sources"]
                            if registry.tasks[n].license in NON_COMMERCIAL
                            or "non-commercial" in registry.tasks[n].license_note.lower())
    lines += ["", "## Licenses", "",
              "Each row keeps the license of the dataset it came from (column `task`)."]
    if non_commercial:
        lines.append(f"**Non-commercial sources:** {', '.join(non_commercial)}: rows from these "
                     "may not be used commercially.")
    for name in sorted(manifest["sources"]):
        spec = registry.tasks[name]
        note = f": {spec.license_note}" if spec.license_note else ""
        lines.append(f"- {name}: `{spec.license}`{note}")
    mixing = manifest["config"]["mixing"]
    drawing = "every template per row" if mixing["all_templates"] else "one template drawn per row"
    total = f", total {mixing['total']:,}" if mixing["total"] else ""
    lines += ["", "## How it was built", "", "```", manifest["command"], "```", "",
              f"seed {manifest['seed']}, at most {mixing['max_per_dataset']:,} rows per dataset, "
              f"mixing-rate cap {mixing['rate_cap']:,}, {drawing}{total}. The full configuration, "
              "package versions and per-template counts are in `manifest.json` beside this card.", ""]
    return "\n".join(lines)
