"""The model card (README.md) of a ``flan train`` run: a Hub-valid YAML header and a body.

It names the base model's licence, so an adapter or merged model uploaded from a run folder
carries it (the base's licence binds what is derived from it; Gemma's terms also ask for a
NOTICE file, written beside the card). Built from the run manifest alone; no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CARD = "README.md"
NOTICE = "NOTICE"


def _base(manifest: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    """(the base model's Hub id where known, its licence record where known)."""
    source = manifest["model_source"]
    hub_id = source.get("upstream") or (source["location"] if source.get("kind") == "hub" else None)
    return hub_id, source.get("license")


def model_card_metadata(manifest: dict[str, Any], *, merged: bool = False) -> dict[str, Any]:
    """The YAML header: licence, base model, library, tags."""
    hub_id, terms = _base(manifest)
    method = manifest["method"]
    adapter = method != "full" and not merged
    meta: dict[str, Any] = {"license": terms["hub_id"] if terms else "unknown"}
    if hub_id:
        meta["base_model"] = hub_id
    meta["library_name"] = "peft" if adapter else "transformers"
    meta["pipeline_tag"] = "text-generation"
    tags = ["flan", "flan-builder", "instruction-tuning", f"heldout-{manifest['heldout_cluster']}", method]
    if hub_id and adapter:
        tags.append(f"base_model:adapter:{hub_id}")
    meta["tags"] = tags
    return meta


def render_model_card(manifest: dict[str, Any], *, merged: bool = False) -> str:
    """The run's README.md (``merged``: the card of the ``merged/`` model folder)."""
    meta = model_card_metadata(manifest, merged=merged)
    hub_id, terms = _base(manifest)
    source = manifest["model_source"]
    method, heldout = manifest["method"], manifest["heldout_cluster"]
    what = ("model (full fine-tune)" if method == "full" else
            f"model ({method} merged into the base weights)" if merged else f"{method} adapter")
    base = hub_id or source["name"]
    header = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip()
    lines = [f"---\n{header}\n---", "", f"# {base}, FLAN-tuned with `{heldout}` held out", "",
             f"A {what} trained with flan-builder on FLAN-style instructions from every task "
             f"cluster except `{heldout}`, which is held out for zero-shot evaluation.", "",
             "## Base model and license", "",
             f"- **Base model:** `{base}` (loaded as `{source['name']}`: {source.get('described', '')})"]
    if terms:
        lines.append(f"- **License:** {terms['name']} ({terms['url']}). This {what} is derived from "
                     f"`{base}` and is subject to that license.")
        if terms.get("notice"):
            lines.append(f"- **Notice:** {terms['notice']}. (Also in the `{NOTICE}` file beside this card.)")
    else:
        lines.append(f"- **License:** not known to flan-builder: the license of `{base}` applies to "
                     "this model; check it before publishing.")
    data = manifest["dataset"]
    lines += ["", "## Training", "",
              f"- **Held-out cluster:** `{heldout}`",
              f"- **Data:** `{data['path']}` (content hash `{data['content_hash'].get('all', '')}`), "
              f"{data['rows_trained']:,} rows trained, format {data['style']}. Each row keeps the "
              "license of the dataset it came from; see that dataset's card.",
              f"- **Method:** {method}; {manifest['parameters']['trainable']:,} trainable of "
              f"{manifest['parameters']['total']:,} parameters",
              f"- **Steps:** {manifest['steps']}, final loss {manifest['final_loss']}, "
              f"seed {manifest['seed']}",
              "", "`run.json` and `recipe.yaml` in the run folder record the full configuration, data hash, "
              "loss curve and package versions.", ""]
    return "\n".join(lines)


def write_model_card(manifest: dict[str, Any], folder: Path, *, merged: bool = False) -> None:
    """README.md (replacing PEFT's placeholder card) and, where the licence asks for it, NOTICE."""
    (folder / CARD).write_text(render_model_card(manifest, merged=merged), encoding="utf-8")
    terms = manifest["model_source"].get("license")
    if terms and terms.get("notice"):
        (folder / NOTICE).write_text(terms["notice"] + "\n", encoding="utf-8")
