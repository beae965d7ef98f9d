"""Fixtures shared by every test folder; plain helpers live in tests/helpers.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers import FIXTURE_DATA, FIXTURE_TEMPLATES, TEMPLATES, free_port, tiny_config


@pytest.fixture
def fixture_registry():
    from flan_builder.specs import load_registry

    return load_registry(FIXTURE_TEMPLATES)


@pytest.fixture(scope="session")
def registry():
    from flan_builder.specs import load_registry

    return load_registry(TEMPLATES)


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    """One model cache for the whole session, never the user's ~/.cache.

    Session-wide, not per test: the suite loads only the smollm2 tokenizer, which reads the
    packaged GGUF and writes nothing to the cache, so no test pays the one-minute save of a
    model folder unless it asks for it (tests/test_models.py, with its own cache). Autouse at
    session scope, so it is set before the session fixtures (``tokenizer``) resolve a model.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLAN_MODEL_CACHE", str(tmp_path_factory.mktemp("model-cache")))
        yield


@pytest.fixture(autouse=True)
def _no_ambient_env(monkeypatch):
    """Tests choose their own templates / data dirs and never see a real Hub token."""
    for name in ("FLAN_TEMPLATES_DIR", "FLAN_DATA_DIR", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def tokenizer():
    from flan_builder.models import load_tokenizer, resolve_model

    try:
        source = resolve_model("smollm2-135m")
    except Exception as exc:  # noqa: BLE001 - the model package is part of the install command
        pytest.skip(f"smollm2-135m not installed: {exc}")
    return load_tokenizer(source)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny random Llama saved like any local model directory, with the SmolLM2 tokenizer."""
    from transformers import LlamaForCausalLM, set_seed

    set_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(tiny_config(len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def toy_build(tmp_path_factory) -> Path:
    """The fixture tasks built with nli held out (paraphrase blocked): qa + multi train."""
    from flan_builder.build import BuildConfig, build
    from flan_builder.specs import load_registry

    out = tmp_path_factory.mktemp("builds") / "toy-nli"
    build(BuildConfig(heldout="nli", out=out, data_dir=FIXTURE_DATA, templates_dir=FIXTURE_TEMPLATES),
          registry=load_registry(FIXTURE_TEMPLATES))
    return out


# -- a real OpenAI-compatible server: transformers serve ------------------------------------------

def _serve_command(model_dir: Path, port: int) -> list[str]:
    import transformers

    script = Path(sys.executable).with_name("transformers")
    if not script.is_file():
        pytest.skip(f"no `transformers` command beside {sys.executable}")
    # transformers 5 takes the model to pin as an argument; 4.x as --force-model
    model = [str(model_dir)] if int(transformers.__version__.split(".")[0]) >= 5 else ["--force-model",
                                                                                      str(model_dir)]
    return [str(script), "serve", *model, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]


@pytest.fixture(scope="session")
def served(tiny_model_dir, tmp_path_factory):
    """``transformers serve`` with the tiny model on a free port; its URL, model id and start time."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    with log.open("wb") as sink:
        process = subprocess.Popen(_serve_command(tiny_model_dir, port), stdout=sink,
                                   stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url, listed = f"http://127.0.0.1:{port}/v1", None
    try:
        deadline = started + 180
        while listed is None:
            if process.poll() is not None:
                pytest.fail(f"transformers serve exited ({process.returncode}): {log.read_text()[-2000:]}")
            if time.perf_counter() > deadline:
                pytest.fail(f"transformers serve not ready after 180 s: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as answer:
                    listed = [m["id"] for m in json.load(answer)["data"]]
            except OSError:
                time.sleep(0.25)
        seconds = time.perf_counter() - started
        print(f"\ntransformers serve ready in {seconds:.1f} s", file=sys.stderr)
        yield SimpleNamespace(url=url, model=listed[0], seconds=seconds, log=log)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
