"""`flan train` under `accelerate launch` and `torchrun` with 2 CPU processes (gloo): the same run as one
process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from flan_builder.build import BuildConfig, build
from flan_builder.mixing import MixingConfig
from tests.helpers import REPO, SHARED_DATA, free_port, make_recipe, requires_shared_data, train_recipe

pytestmark = [pytest.mark.slow, requires_shared_data]


@pytest.fixture(scope="module")
def sixteen_rows(tmp_path_factory):
    """16 training rows: 4 steps of a global batch of 4 are exactly one epoch, so no process pads
    its last batch with repeated rows (which would make the runs differ for a reason of their own)."""
    out = tmp_path_factory.mktemp("mp") / "sst2"
    build(BuildConfig(heldout="nli", out=out, data_dir=SHARED_DATA, tasks=["glue_sst2"],
                      mixing=MixingConfig(max_per_dataset=16)))
    return out

# Plain SGD: the update is linear in the gradient, so the two runs' weights differ only by float error.
# (With Adam, a weight whose gradient is ~0 moves by ±lr on the sign of rounding noise.) No LoRA
# dropout: each process draws its own masks, so dropout alone would make the runs differ.
SETTINGS = {"max_steps": 4, "save_steps": 100, "learning_rate": 0.5, "optim": "sgd", "seed": 3,
            "logging_steps": 1}
NO_DROPOUT = {"dropout": 0.0}


def _launch(launcher: list[str], recipe, tmp_path):
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([*launcher, "-m", "flan_builder.cli", "train", str(recipe)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, tiny_model_dir, sixteen_rows,
                                                                 launcher):
    single = train_recipe(make_recipe(tmp_path, tiny_model_dir, sixteen_rows, name="single",
                                      sft={**SETTINGS, "per_device_train_batch_size": 4}, peft=NO_DROPOUT))
    recipe = make_recipe(tmp_path, tiny_model_dir, sixteen_rows, name="double",
                         sft={**SETTINGS, "per_device_train_batch_size": 2}, peft=NO_DROPOUT)
    port = str(free_port())
    command = {
        # accelerate runs several CPU processes through its multi-process launcher (torchrun underneath);
        # `--cpu` alone would start one process
        "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                       "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                       "--dynamo_backend", "no", "--main_process_port", port],
        "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                     "--master_port", port],
    }[launcher]
    done = _launch(command, recipe, tmp_path)
    run = json.loads((tmp_path / "double" / "run.json").read_text(encoding="utf-8"))
    assert run["world_size"] == 2 and run["steps"] == 4
    # one process printed the summary and wrote the output; no second copy anywhere
    assert done.stderr.count("trainable of") == 1
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".double")]  # no partial, no temp
    # the two ranks saw different halves of each global batch: together, exactly the single run's rows
    assert run["tokens_seen"] == single.manifest["tokens_seen"]
    # the loss is averaged over both processes' tokens: the same curve as one process
    assert [s for s, _ in run["loss_curve"]] == [s for s, _ in single.manifest["loss_curve"]] == [1, 2, 3, 4]
    for (_, loss), (_, expected) in zip(run["loss_curve"], single.manifest["loss_curve"], strict=True):
        assert loss == pytest.approx(expected, rel=1e-4)
    a = load_file(single.out / "adapter_model.safetensors")
    b = load_file(tmp_path / "double" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert any(key.endswith("lora_B.weight") and a[key].abs().max() > 1e-4 for key in a)  # it trained
    for key in a:  # float32 sums in another order (two ranks' gradients, all-reduced)
        assert torch.allclose(a[key], b[key], rtol=1e-3, atol=1e-7), key
