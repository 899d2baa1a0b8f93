"""The documentation's commands: every `python run_downstream.py ...` line of a shell block in README.md and
docs/*.md composes with the project's config (its keys and values exist and resolve), and every one not
marked `# needs: <what>` (real data, a GPU, a cluster, the network) is run by a test: one that a
`# tested by tests/<file>.py::<test>` marker names (which must exist), or here, as the documented command with a
shortened schedule (trainer.max_steps=2, ...) and the outputs in a temporary folder; the
site itself is built with `mkdocs build --strict` by .ci/run (links and anchors included)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers import REPO_ROOT, compose_config, launch_timeout_s, run_downstream_cli

DOC_FILES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
NEEDS = re.compile(r"#.*\bneeds:\s*([^#]+)")
# `# tested by tests/<file>.py::<test>`: a test elsewhere runs this command (or the same launch); it must exist.
TESTED_BY = re.compile(r"#.*\btested by (tests/[\w/]+\.py)::(\w+)")
# What a test run adds to a documented command: a short schedule, and hydra folders in the test's tmp_path.
# A documented successive-halving step is moved to the short schedule's first evaluation.
SHORT = ["trainer.max_steps=2", "trainer.eval_every=1", "trainer.limit_eval_batches=1"]


@dataclass(frozen=True)
class DocCommand:
    page: str
    line: str  # as written, continuations joined
    arguments: tuple[str, ...]  # after `python run_downstream.py`
    needs: str | None  # what a `# needs: ...` marker says the command needs, else None
    tested_by: tuple[str, str] | None = None  # (test file, test name) of a `# tested by ...` marker

    @property
    def multirun(self) -> bool:
        return "-m" in self.arguments or "--multirun" in self.arguments

    @property
    def overrides(self) -> list[str]:
        """The key=value arguments (options such as ``-m`` and ``--cfg job`` left out)."""
        return [argument for argument in self.arguments if "=" in argument and not argument.startswith("-")]

    def __str__(self) -> str:
        return f"{self.page}: {self.line}"


def shell_lines(text: str) -> list[str]:
    """The lines of the page's bash/sh blocks, with backslash continuations joined."""
    lines = []
    for block in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        lines += [line.strip() for line in joined.splitlines() if line.strip()]
    return lines


def documented_commands() -> list[DocCommand]:
    commands = []
    for path in DOC_FILES:
        for line in shell_lines(path.read_text()):
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:2] != ["python", "run_downstream.py"]:
                    continue
                marker, tested = NEEDS.search(part), TESTED_BY.search(part)
                needs = marker.group(1).strip() if marker else None
                page = str(path.relative_to(REPO_ROOT))
                commands.append(
                    DocCommand(
                        page, part.strip(), tuple(words[2:]), needs, tested.groups() if tested else None
                    )
                )
    return commands


COMMANDS = documented_commands()


def first_values(overrides: list[str]) -> list[str]:
    """A multirun's overrides with each sweep (`a,b,c`) reduced to its first value: one job of it."""
    reduced = []
    for override in overrides:
        key, _, value = override.partition("=")
        if "," in value and not value.startswith(("[", "{", "'", '"')):
            value = value.split(",")[0]
        reduced.append(f"{key}={value}")
    return reduced


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 10, [str(command) for command in COMMANDS]
    assert any(command.needs for command in COMMANDS)
    assert any(command.needs is None for command in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_every_documented_command_composes(command: DocCommand):
    overrides = first_values(command.overrides)
    cfg = compose_config(overrides)
    for key in cfg:  # every ${...} of the job config resolves (schedule, protocol, paths, run hash)
        if key == "hydra":
            continue
        value = cfg[key]  # a scalar resolves when read
        if OmegaConf.is_config(value):
            OmegaConf.to_container(value, resolve=True)
    for override in overrides:
        key, _, value = override.partition("=")
        if "/" in key or key.startswith(("hydra", "+", "~", "experiment")) or "," in override:
            continue
        assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", f"{command}: no key {key}"


UNMARKED = [command for command in COMMANDS if command.needs is None and command.tested_by is None]


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.tested_by], ids=str)
def test_commands_tested_elsewhere_name_an_existing_test(command: DocCommand):
    file, name = command.tested_by
    assert re.search(rf"^def {name}\(", (REPO_ROOT / file).read_text(), re.MULTILINE), (
        f"{command}: no {file}::{name}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("command", UNMARKED, ids=str)
def test_every_unmarked_command_runs(command: DocCommand, tmp_path: Path):
    if "--cfg" in command.arguments or "--help" in command.arguments:
        completed = run_downstream_cli(list(command.arguments))
        assert completed.stdout.strip(), f"{command} printed nothing"
        return
    folder = "hydra.sweep.dir" if command.multirun else "hydra.run.dir"
    arguments = [
        "trainer.halving_steps=[1]" if argument.startswith("trainer.halving_steps=") else argument
        for argument in command.arguments
    ]
    arguments += [*SHORT, f"{folder}={tmp_path / 'out'}"]
    run_downstream_cli(arguments, timeout=launch_timeout_s(updates=250))
    written = list((tmp_path / "out").rglob("results.json"))
    assert written, f"{command} wrote no results.json"
