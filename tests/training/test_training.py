"""`flan train`: recipes, the PEFT family on a tiny Llama, outputs, resume, reproducibility, errors.

The model is a 2-layer Llama built from a config (random weights) with the real
SmolLM2 tokenizer; the data is the hand-written fixture built by `flan build`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import (
    FIXTURE_DATA,
    FIXTURE_TEMPLATES,
    HIDDEN,
    INTER,
    KV_DIM,
    LAYERS,
    REPO,
    TEMPLATES,
    make_recipe,
    tiny_config,
    train_recipe,
)

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

# -- recipes -----------------------------------------------------------------------------------

def test_one_valid_recipe_per_cluster():
    from flan_builder.specs import load_registry
    from flan_builder.training.recipe import load_recipe

    registry = load_registry(TEMPLATES)
    # opt-in clusters (tabular) are trained with `flan lift` (train/lift.yaml), not held out
    clusters = {c for c in registry.clusters if not registry.cluster_info(c).opt_in}
    recipes = sorted((REPO / "train").glob("heldout-*.yaml"))
    loaded = [load_recipe(path) for path in recipes]
    assert {r.heldout for r in loaded} == clusters
    assert len(recipes) == len(clusters) == 11
    lift = load_recipe(REPO / "train" / "lift.yaml")
    assert lift.heldout == "none" and lift.sft["num_train_epochs"] > 0
    for recipe in loaded:
        assert recipe.model == "smollm2-135m" and recipe.method == "lora"
        assert recipe.build is not None and Path(recipe.dataset_path).name.endswith(
            recipe.heldout.replace("_", "-"))


@pytest.mark.parametrize(("override", "message"), [
    ("sft.learnig_rate=1", "unknown key 'sft.learnig_rate' (did you mean 'learning_rate'?)"),
    ("peft.rank=4", "unknown key 'peft.rank'"),
    ("peft.method=adapterx", "peft.method must be one of lora, full"),
    ("peft.r=0", "peft.r must be greater than 0"),
    ("peft.dropout=1.5", "peft.dropout must be in [0, 1)"),
    ("peft.r=four", "peft.r must be int"),
    ("train.padding_free=maybe", "train.padding_free must be one of"),
    ("datset.path=x", "unknown key 'datset' (did you mean 'dataset'?)"),
    ("sft.output_dir=x", "sft.output_dir is set by the recipe's `output`"),
])
def test_recipe_typos_and_bad_values_name_the_key(override, message):
    from flan_builder.errors import FlanError
    from flan_builder.training.recipe import load_recipe

    with pytest.raises(FlanError, match=None) as caught:
        load_recipe(REPO / "train" / "heldout-nli.yaml", [override])
    assert message in str(caught.value)


def test_every_field_can_be_overridden_and_incompatible_choices_are_refused():
    from flan_builder.errors import FlanError
    from flan_builder.training.recipe import load_recipe

    recipe = load_recipe(REPO / "train" / "heldout-nli.yaml",
                         ["sft.learning_rate=1e-4", "peft.method=ia3", "model=HuggingFaceTB/x",
                          "dataset.build.total=500", "train.compact_lm_head=false"])
    assert recipe.sft["learning_rate"] == 1e-4 and recipe.method == "ia3"
    assert recipe.model == "HuggingFaceTB/x" and recipe.build["total"] == 500
    assert recipe.train["compact_lm_head"] is False
    for overrides, message in [
        (["peft.method=prompt_tuning", "train.padding_free=true"], "virtual tokens would be seen"),
        (["peft.method=prefix_tuning", "sft.packing=true"], "share one set of virtual tokens"),
        (["peft.method=p_tuning", "train.merge=true"], "not possible with p_tuning"),
    ]:
        with pytest.raises(FlanError, match=message):
            load_recipe(REPO / "train" / "heldout-nli.yaml", overrides)


# -- PEFT family: closed-form trainable-parameter counts ---------------------------------------

def _closed_form(method: str, vocab: int, r: int = 4, n: int = 5, e: int = 16) -> int:
    per_layer_linear = {  # (in, out) of every Linear in one Llama layer
        "q": (HIDDEN, HIDDEN), "k": (HIDDEN, KV_DIM), "v": (HIDDEN, KV_DIM), "o": (HIDDEN, HIDDEN),
        "gate": (HIDDEN, INTER), "up": (HIDDEN, INTER), "down": (INTER, HIDDEN),
    }
    if method == "full":
        layer = sum(i * o for i, o in per_layer_linear.values()) + 2 * HIDDEN  # + two RMSNorms
        return 2 * vocab * HIDDEN + LAYERS * layer + HIDDEN  # embeddings, lm_head, final norm
    if method == "lora":  # A: r x in, B: out x r, on every linear layer but the LM head
        return LAYERS * sum(r * (i + o) for i, o in per_layer_linear.values())
    if method == "prompt_tuning":  # n virtual token embeddings
        return n * HIDDEN
    if method == "prefix_tuning":  # a key and a value prefix of n positions in every layer
        return n * LAYERS * 2 * KV_DIM
    if method == "p_tuning":  # n embeddings + MLP encoder hidden->e->e->hidden (with biases)
        return n * HIDDEN + (HIDDEN * e + e) + (e * e + e) + (e * HIDDEN + HIDDEN)
    if method == "ia3":  # a scaling vector on k and v outputs and on down_proj's input
        return LAYERS * (KV_DIM + KV_DIM + INTER)
    raise AssertionError(method)


@pytest.mark.parametrize("method", ["lora", "full", "prompt_tuning", "prefix_tuning", "p_tuning", "ia3"])
def test_trainable_parameter_counts_match_the_closed_form(method):
    import peft
    from transformers import LlamaForCausalLM

    from flan_builder.training.peft_methods import make_peft_config, parameter_counts
    from flan_builder.training.recipe import _PEFT, check_section

    vocab = 1000
    settings = check_section({"method": method, "r": 4, "num_virtual_tokens": 5,
                               "encoder_hidden_size": 16}, _PEFT, "peft", "test")
    model = LlamaForCausalLM(tiny_config(vocab))
    base_total = sum(p.numel() for p in model.parameters())
    config = make_peft_config(settings, model)
    wrapped = peft.get_peft_model(model, config) if config is not None else model
    counts = parameter_counts(wrapped)
    expected = _closed_form(method, vocab)
    assert counts["trainable"] == expected
    assert counts["total"] == base_total + (0 if method == "full" else expected)
    assert counts["fraction"] == pytest.approx(expected / counts["total"])


# -- training: every method trains, saves and reloads ------------------------------------------

def _reloaded_logits(out: Path, manifest: dict, tokenizer, text: str):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    ids = tokenizer(text, return_tensors="pt")
    if manifest["method"] == "full":
        model = AutoModelForCausalLM.from_pretrained(out)
    else:
        model = AutoPeftModelForCausalLM.from_pretrained(out)
    model.eval()
    with torch.no_grad():
        # the next-token distribution after the text (virtual-token methods add positions before it)
        return model(**ids).logits[:, -1]


@pytest.mark.parametrize("method", ["lora", "full", "prompt_tuning", "prefix_tuning", "p_tuning", "ia3"])
def test_each_peft_method_trains_saves_and_reloads(tmp_path, tiny_model_dir, toy_build, tokenizer,
                                                   method):
    from transformers import AutoModelForCausalLM

    recipe = make_recipe(tmp_path, tiny_model_dir, toy_build, peft={"method": method})
    result = train_recipe(recipe)
    out, manifest = result.out, result.manifest
    assert (out / "run.json").is_file() and (out / "recipe.yaml").is_file()
    assert (out / "tokenizer_config.json").is_file()
    assert (out / ("model.safetensors" if method == "full" else "adapter_model.safetensors")).is_file()
    assert manifest["steps"] == 4 and len(manifest["loss_curve"]) == 4
    assert manifest["parameters"]["trainable"] == _closed_form(method, len(tokenizer))
    assert manifest["tokens_seen"] > 0 and manifest["heldout_cluster"] == "nli"
    # training moved the weights away from the base model's
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    text = "Is the sky blue?\n\nOPTIONS:\n- yes\n- no"
    tuned = _reloaded_logits(out, manifest, tokenizer, text)
    with torch.no_grad():
        original = base(**tokenizer(text, return_tensors="pt")).logits[:, -1]
    assert not torch.allclose(tuned, original, atol=1e-4)
    # and reloading twice gives the same model
    assert torch.allclose(tuned, _reloaded_logits(out, manifest, tokenizer, text), atol=1e-6)


def test_merge_writes_a_model_equal_to_base_plus_adapter(tmp_path, tiny_model_dir, toy_build,
                                                         tokenizer):
    from transformers import AutoModelForCausalLM

    result = train_recipe(make_recipe(tmp_path, tiny_model_dir, toy_build), ["train.merge=true"])
    text = "Translate: bonjour"
    adapter = _reloaded_logits(result.out, result.manifest, tokenizer, text)
    merged = AutoModelForCausalLM.from_pretrained(result.out / "merged").eval()
    with torch.no_grad():
        logits = merged(**tokenizer(text, return_tensors="pt")).logits[:, -1]
    assert torch.allclose(adapter, logits, atol=1e-4)


def test_run_manifest_records_dataset_model_and_versions(tmp_path, tiny_model_dir, toy_build):
    result = train_recipe(make_recipe(tmp_path, tiny_model_dir, toy_build))
    run = json.loads((result.out / "run.json").read_text())
    built = json.loads((toy_build / "manifest.json").read_text())
    assert run["dataset"]["content_hash"] == built["content_hash"]
    assert run["model_source"]["kind"] == "local" and run["model_source"]["location"] == str(tiny_model_dir)
    assert {"torch", "transformers", "trl", "peft", "accelerate"} <= set(run["versions"])
    assert run["final_loss"] == run["loss_curve"][-1][1] and run["wall_time_s"] > 0
    assert run["padding_free"] is True and run["compact_lm_head"] is True
    resolved = yaml.safe_load((result.out / "recipe.yaml").read_text())
    assert resolved["peft"]["r"] == 4 and resolved["sft"]["max_steps"] == 4
    assert not (tmp_path / ".run.partial").exists()  # checkpoints are cleaned up after success


def test_same_recipe_and_seed_give_the_same_loss_curve(tmp_path, tiny_model_dir, toy_build):
    first = train_recipe(make_recipe(tmp_path, tiny_model_dir, toy_build, name="a")).manifest["loss_curve"]
    second = train_recipe(make_recipe(tmp_path, tiny_model_dir, toy_build, name="b")).manifest["loss_curve"]
    other = train_recipe(make_recipe(tmp_path, tiny_model_dir, toy_build, name="c"), ["sft.seed=1"])
    assert first == second
    assert other.manifest["loss_curve"] != first


@pytest.mark.parametrize("padding_free", [True, False])
def test_only_the_completion_is_trained_on(tmp_path, tiny_model_dir, toy_build, tokenizer, monkeypatch,
                                           padding_free):
    """FLAN's loss covers the target, not the instruction: every micro-batch scores exactly its
    rows' completion tokens (the rows arrive tokenized, so TRL cannot tell from column names)."""
    from flan_builder.training import sft
    from flan_builder.training.data import load_training_data

    scored: list[int] = []
    original = sft.FlanSFTTrainer.training_step

    def recording(self, model, inputs, *args, **kwargs):
        scored.append(int((inputs["labels"] != -100).sum()))
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(sft.FlanSFTTrainer, "training_step", recording)
    result = train_recipe(make_recipe(tmp_path, tiny_model_dir, toy_build),
                          ["sft.train_sampling_strategy=sequential", f"train.padding_free={padding_free}"])
    assert result.manifest["padding_free"] is padding_free and result.manifest["completion_only_loss"] is True
    rows = load_training_data(toy_build, "nli", tokenizer, 96).dataset
    batches = [list(range(start, min(start + 4, len(rows)))) for start in range(0, len(rows), 4)]
    batches = (batches * len(scored))[:len(scored)]  # in order, epoch after epoch
    expected = [sum(sum(rows[i]["completion_mask"]) for i in batch) for batch in batches]
    prompts = [len(row["input_ids"]) - sum(row["completion_mask"]) for row in rows]
    assert len(scored) == 4 and min(prompts) > 0
    assert scored == expected


def test_freed_memory_is_handed_back_after_every_step_without_changing_training(
        tmp_path, tiny_model_dir, toy_build, monkeypatch):
    from flan_builder.training import sft

    real = sft.malloc_trim()
    if real is None:
        pytest.skip("not glibc: there is no malloc_trim to call")
    calls: list[int] = []

    def counting() -> object:
        def trim(pad: int) -> int:
            calls.append(pad)
            return real(pad)
        return trim

    monkeypatch.setattr(sft, "malloc_trim", counting)
    trimmed = train_recipe(make_recipe(tmp_path, tiny_model_dir, toy_build, name="trim")).manifest
    assert calls == [0] * trimmed["steps"] and trimmed["steps"] == 4
    calls.clear()
    kept = train_recipe(make_recipe(tmp_path, tiny_model_dir, toy_build, name="keep"),
                        ["train.release_memory=false"]).manifest
    assert calls == []
    assert kept["loss_curve"] == trimmed["loss_curve"]


def test_padding_free_and_compact_head_train_like_padded_batches(tmp_path, tiny_model_dir, toy_build):
    """The fast paths change how a batch is computed, not what is learned."""
    # no dropout: its random masks depend on the batch layout
    fast = train_recipe(make_recipe(tmp_path, tiny_model_dir, toy_build, name="fast"),
                        ["peft.dropout=0"]).manifest
    plain = train_recipe(make_recipe(tmp_path, tiny_model_dir, toy_build, name="plain"),
                         ["peft.dropout=0", "train.padding_free=false",
                          "train.compact_lm_head=false"]).manifest
    assert fast["padding_free"] and not plain["padding_free"] and not plain["compact_lm_head"]
    assert [s for s, _ in fast["loss_curve"]] == [s for s, _ in plain["loss_curve"]]
    for (_, a), (_, b) in zip(fast["loss_curve"], plain["loss_curve"], strict=True):
        assert a == pytest.approx(b, rel=1e-4)


def test_rows_whose_completion_is_truncated_away_are_counted_and_dropped(toy_build, tokenizer):
    from datasets import load_from_disk

    from flan_builder.training.data import tokenize_prompt_completion

    split = load_from_disk(str(toy_build))["train"].select_columns(["prompt", "completion"])
    prompt_lengths = [len(tokenizer(p)["input_ids"]) for p in split["prompt"]]
    limit = sorted(prompt_lengths)[len(prompt_lengths) // 2]  # half the prompts fill it
    tokenized, stats = tokenize_prompt_completion(split, tokenizer, limit)
    expected_dropped = sum(length >= limit for length in prompt_lengths)
    assert stats["dropped_truncated"] == expected_dropped > 0
    assert len(tokenized) == len(split) - expected_dropped
    assert all(len(ids) <= limit and any(mask) for ids, mask in
               zip(tokenized["input_ids"], tokenized["completion_mask"], strict=True))
    # completion tokens end with EOS when not cut, and the mask marks exactly the completion
    untruncated, _ = tokenize_prompt_completion(split, tokenizer, None)
    row = untruncated[0]
    assert row["input_ids"][-1] == tokenizer.eos_token_id
    assert sum(row["completion_mask"]) == len(row["input_ids"]) - prompt_lengths[0]


def test_messages_datasets_train_with_the_chat_template(tmp_path, tiny_model_dir):
    from flan_builder.build import BuildConfig, build
    from flan_builder.specs import load_registry

    data = tmp_path / "msgs"
    build(BuildConfig(heldout="nli", out=data, data_dir=FIXTURE_DATA, templates_dir=FIXTURE_TEMPLATES,
                      style="messages"), registry=load_registry(FIXTURE_TEMPLATES))
    result = train_recipe(make_recipe(tmp_path, tiny_model_dir, data, sft={"max_length": 256}))
    assert result.manifest["dataset"]["style"] == "messages"
    assert result.manifest["padding_free"] is False and result.manifest["steps"] == 4


def test_messages_dataset_with_a_model_without_chat_template_is_a_one_line_error(tmp_path, tiny_model_dir):
    import shutil

    from flan_builder.build import BuildConfig, build
    from flan_builder.errors import FlanError
    from flan_builder.specs import load_registry

    base = tmp_path / "base-model"  # a base model: the same tokenizer without its chat template
    shutil.copytree(tiny_model_dir, base)
    (base / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((base / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    data = tmp_path / "msgs"
    build(BuildConfig(heldout="nli", out=data, data_dir=FIXTURE_DATA, templates_dir=FIXTURE_TEMPLATES,
                      style="messages"), registry=load_registry(FIXTURE_TEMPLATES))
    with pytest.raises(FlanError, match="built --as messages, but the model's tokenizer has no chat"):
        train_recipe(make_recipe(tmp_path, base, data))
    assert not (tmp_path / "run").exists() and not (tmp_path / ".run.partial").exists()


# -- resume and atomic outputs -----------------------------------------------------------------

def test_resume_gives_the_same_final_weights_as_an_uninterrupted_run(tmp_path, tiny_model_dir,
                                                                    toy_build, monkeypatch):
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    from flan_builder.training import sft

    whole = train_recipe(make_recipe(tmp_path, tiny_model_dir, toy_build, name="whole",
                           sft={"max_steps": 6, "save_steps": 3}))

    class Interrupt(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt  # an interruption right after step 3's checkpoint

    original_init = sft.FlanSFTTrainer.__init__

    def init_with_interrupt(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(Interrupt())

    recipe = make_recipe(tmp_path, tiny_model_dir, toy_build, name="split",
                         sft={"max_steps": 6, "save_steps": 3})
    monkeypatch.setattr(sft.FlanSFTTrainer, "__init__", init_with_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_recipe(recipe)
    monkeypatch.setattr(sft.FlanSFTTrainer, "__init__", original_init)
    assert not (tmp_path / "split").exists()  # nothing at the output path
    assert (tmp_path / ".split.partial" / "checkpoints" / "checkpoint-3").is_dir()
    resumed = train_recipe(recipe, resume=True)
    assert resumed.manifest["resumed_from"].endswith("checkpoint-3")
    assert resumed.manifest["steps"] == 6
    a = load_file(whole.out / "adapter_model.safetensors")
    b = load_file(resumed.out / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    # the loss after resuming follows the uninterrupted curve
    assert resumed.manifest["loss_curve"][-1][1] == pytest.approx(whole.manifest["loss_curve"][-1][1],
                                                                  rel=1e-5)


@pytest.mark.slow
def test_killed_run_leaves_no_complete_looking_output_and_resumes(tmp_path, tiny_model_dir, toy_build):
    recipe = make_recipe(tmp_path, tiny_model_dir, toy_build, name="killed",
                     sft={"max_steps": 400, "save_steps": 2, "per_device_train_batch_size": 2})
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "flan_builder.cli", "train", str(recipe)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    partial = tmp_path / ".killed.partial" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (partial.is_dir() and len(list(partial.glob("checkpoint-*"))) >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(partial.glob("checkpoint-*")), proc.stderr.read().decode()[-2000:]
    assert not (tmp_path / "killed").exists()
    done = subprocess.run([sys.executable, "-m", "flan_builder.cli", "train", str(recipe), "--resume",
                           "--max-steps", "8"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    run = json.loads((tmp_path / "killed" / "run.json").read_text())
    assert run["steps"] == 8 and run["resumed_from"]


# -- bad input: one line, exit code 2 ----------------------------------------------------------

def _cli(args, cwd=REPO):
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "flan_builder.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, tiny_model_dir, toy_build):
    recipe = make_recipe(tmp_path, tiny_model_dir, toy_build)
    (tmp_path / "exists").mkdir()
    cases = [
        (["--dataset", str(tmp_path / "nope")], "dataset directory"),
        (["--set", "sft.lerning_rate=1"], "did you mean 'learning_rate'"),
        (["--peft", "loha"], "peft.method must be one of"),
        (["--set", "heldout=sentiment"], "held-out mismatch"),
        (["--set", "heldout=poetry"], "unknown cluster"),
        (["--model", str(tmp_path / "missing.gguf")], "not found"),
        (["--model", "no-such-model"], "not found"),
        (["--output", str(tmp_path / "exists")], "already exists"),
        (["--resume"], "no checkpoint to resume"),
    ]
    for extra, message in cases:
        done = _cli(["train", str(recipe), *extra])
        assert done.returncode == 2, (extra, done.stderr[-1500:])
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("flan train: error:"), (extra, done.stderr[-1500:])
        assert message in lines[0], (extra, lines[0])
    missing = _cli(["train", str(tmp_path / "nope.yaml")])
    assert missing.returncode == 2 and "recipe" in missing.stderr and "not found" in missing.stderr


def test_resume_skips_a_checkpoint_left_incomplete_by_a_kill_mid_save(tmp_path):
    from flan_builder.training.job import last_checkpoint

    folder = tmp_path / "checkpoints"
    # 6: killed before transformers' state; 7: killed after it, before our run totals
    for step, saved in [(2, 2), (4, 2), (6, 0), (7, 1)]:
        checkpoint = folder / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "adapter_model.safetensors").write_bytes(b"")
        if saved >= 1:
            (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        if saved >= 2:
            (checkpoint / "flan_totals.json").write_text(json.dumps({"step": step, "tokens_seen": 1,
                                                                      "loss_sum": 1.0}))
    (folder / "checkpoint-8").mkdir()
    (folder / "checkpoint-8" / "trainer_state.json").write_text('{"global_st')  # cut mid-write
    assert last_checkpoint(tmp_path) == folder / "checkpoint-4"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert last_checkpoint(tmp_path / "elsewhere") is None


def test_known_breakage_prefix_tuning_with_activation_checkpointing_is_handled(
        tmp_path, tiny_model_dir, toy_build):
    """peft prefix key/values and checkpointed attention disagree on the mask size; we train without it."""
    result = train_recipe(make_recipe(tmp_path, tiny_model_dir, toy_build),
                    ["peft.method=prefix_tuning", "sft.gradient_checkpointing=true"])
    assert result.manifest["steps"] == 4 and result.manifest["final_loss"] is not None


def test_report_to_tensorboard_keeps_its_logs_in_the_run(tmp_path, tiny_model_dir, toy_build):
    pytest.importorskip("tensorboard")
    result = train_recipe(make_recipe(tmp_path, tiny_model_dir, toy_build), ["sft.report_to=tensorboard"])
    assert list((result.out / "runs").rglob("events.out.tfevents*"))


def test_packing_trains_on_the_pretokenized_rows(tmp_path, tiny_model_dir, toy_build):
    result = train_recipe(make_recipe(tmp_path, tiny_model_dir, toy_build), ["sft.packing=true"])
    assert result.manifest["packing"] is True and result.manifest["steps"] == 4


def test_a_training_split_with_held_out_rows_is_refused(toy_build):
    from datasets import Dataset

    from flan_builder.errors import FlanError
    from flan_builder.manifest import read_dataset_manifest
    from flan_builder.training.data import check_heldout

    manifest = read_dataset_manifest(toy_build)
    leaking = Dataset.from_list([{"cluster": "qa", "task": "toy_qa"},
                                 {"cluster": "paraphrase", "task": "toy_para"}])
    with pytest.raises(FlanError, match="rows from the held-out side .*paraphrase"):
        check_heldout(manifest, "nli", toy_build, leaking)
    with pytest.raises(FlanError, match="held-out mismatch"):
        check_heldout(manifest, "qa", toy_build, leaking)


@pytest.mark.parametrize(("overrides", "mean_tokens", "style", "expected"), [
    ([], 60.0, "prompt_completion", True),  # nli-like rows: 8 x 60 tokens in one flat sequence
    (["sft.per_device_train_batch_size=8"], 370.0, "prompt_completion", False),  # breast_cancer
    # rows, 8 a micro-batch: a 2,960-token block mask
    ([], 370.0, "prompt_completion", True),  # the recipe's micro-batch of 2: 740 tokens
    (["train.padding_free=true"], 370.0, "prompt_completion", True),  # asked for: kept
    (["train.padding_free=false"], 60.0, "prompt_completion", False),
    (["peft.method=prompt_tuning"], 60.0, "prompt_completion", False),  # virtual tokens
    ([], 60.0, "messages", False),
])
def test_auto_padding_free_follows_the_flattened_batch_length(overrides, mean_tokens, style, expected):
    from flan_builder.training.job import _choose_padding_free
    from flan_builder.training.recipe import load_recipe

    recipe = load_recipe(REPO / "train" / "heldout-nli.yaml", overrides)
    assert _choose_padding_free(recipe, style, mean_tokens) is expected


# -- precision ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "native", "expected"), [
    ([], True, "bf16"),  # auto: the device's native bf16 decides
    ([], False, "fp32"),
    (["train.precision=fp32"], True, "fp32"),
    (["train.precision=bf16"], False, "bf16"),  # asked for: kept, even where it is emulated
    (["sft.bf16=false"], True, "fp32"),  # sft.bf16 decides when precision is auto
    (["sft.bf16=true", "train.precision=bf16"], False, "bf16"),
])
def test_auto_precision_follows_the_device_and_sft_bf16_decides_when_set(overrides, native, expected,
                                                                          monkeypatch):
    from flan_builder.training import job
    from flan_builder.training.recipe import load_recipe

    monkeypatch.setattr(job, "native_bf16", lambda: native)
    assert job.training_precision(load_recipe(REPO / "train" / "heldout-nli.yaml", overrides)) == expected


def test_sft_bf16_against_train_precision_is_a_one_line_error():
    from flan_builder.errors import FlanError
    from flan_builder.training.job import training_precision
    from flan_builder.training.recipe import load_recipe

    recipe = load_recipe(REPO / "train" / "heldout-nli.yaml", ["sft.bf16=true", "train.precision=fp32"])
    with pytest.raises(FlanError, match=r"heldout-nli.yaml: sft.bf16 is True but train.precision is fp32"):
        training_precision(recipe)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_bf16_holds_a_frozen_base_in_bf16_and_saves_fp32(method, tmp_path, tiny_model_dir, toy_build,
                                                         tokenizer, monkeypatch):
    """Under bf16 a LoRA run's frozen base trains in bf16 and its adapter in fp32; full tuning keeps
    fp32 weights; either way what is saved (adapter, merged model, whole model) is fp32 and close to
    the same run in fp32."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from flan_builder.training import sft

    seen = {}
    original = sft.FlanSFTTrainer.__init__

    def spy(self, *args, **kwargs):
        seen["base_dtype"] = kwargs["model"].dtype
        original(self, *args, **kwargs)
        seen["trained"] = {p.dtype for p in self.model.parameters() if p.requires_grad}
        seen["autocast"] = self.args.bf16

    monkeypatch.setattr(sft.FlanSFTTrainer, "__init__", spy)
    overrides = [f"peft.method={method}", "train.merge=true", "sft.learning_rate=1e-3"]
    half = train_recipe(make_recipe(tmp_path, tiny_model_dir, toy_build, name="half"),
                        [*overrides, "train.precision=bf16"])
    assert half.manifest["precision"] == "bf16" and seen["autocast"] is True
    assert seen["base_dtype"] == (torch.bfloat16 if method == "lora" else torch.float32)
    assert seen["trained"] == {torch.float32}
    full = train_recipe(make_recipe(tmp_path, tiny_model_dir, toy_build, name="full"), overrides)
    assert full.manifest["precision"] == "fp32" and seen["autocast"] is False
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in half.manifest["loss_curve"])
    for a, b in zip(half.manifest["loss_curve"], full.manifest["loss_curve"], strict=True):
        assert a[1] == pytest.approx(b[1], rel=0.05)  # bf16 rounding, not a different run
    saved = half.out / ("merged" if method == "lora" else ".")
    merged = AutoModelForCausalLM.from_pretrained(saved)
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    if method == "lora":
        adapter = load_file(half.out / "adapter_model.safetensors")
        assert {t.dtype for t in adapter.values()} == {torch.float32}
