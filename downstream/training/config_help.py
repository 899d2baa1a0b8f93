"""Help with the config: "did you mean" for a mistyped key or option, and the listing behind ``--help``.

Torch-free (``run_downstream.py`` uses it before any model is built).

- ``suggest(error)``: Hydra's composition errors (an override of a key the config lacks, a config group
  option that does not exist) rewritten as one message with the closest names of the config tree
  (``difflib``), instead of Hydra's advice to append the key with ``+`` (which only fails later, when the
  component that should read the key does not know it).
- ``help_text()``: every config group with its options, and every root and trainer key and the keys of every
  interface, upstream, task, protocol and logger option, each with the first sentence of the comment written
  beside it (or above it) in the YAML files, wrapped at ``WIDTH`` columns.
"""

from __future__ import annotations

import difflib
import re
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
#: Groups that are not part of a plain run's choices (Hydra's own and the experiment presets are listed apart).
_HYDRA_GROUPS = ("hydra",)


class ConfigNameError(ValueError):
    """A key or config option that the config tree does not have; the message names close ones."""


def config_groups(config_dir: Path = CONFIG_DIR) -> dict[str, list[str]]:
    """{group: [option, ...]} of the config folders (``interface``, ``task``, ``hydra/launcher``, ...)."""
    groups: dict[str, list[str]] = {}
    for path in sorted(config_dir.rglob("*.yaml")):
        group = path.parent.relative_to(config_dir).as_posix()
        if group != ".":
            groups.setdefault(group, []).append(path.stem)
    return groups


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, dict):
        for key, value in node.items():
            dotted = f"{prefix}.{key}" if prefix else str(key)
            keys.append(dotted)
            keys.extend(_flat_keys(value, dotted))
    return keys


def composed_keys(overrides: Iterable[str] = (), config_dir: Path = CONFIG_DIR) -> list[str]:
    """Every dotted key of the root config composed with the valid group choices among ``overrides``
    (``task=sd`` brings SD's task keys), unresolved."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    groups = config_groups(config_dir)
    choices = []
    for override in overrides:
        key, _, value = override.partition("=")
        if key in groups and value in groups[key]:
            choices.append(override)
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir), version_base="1.3"):
        cfg = compose("config", overrides=choices)
    GlobalHydra.instance().clear()
    return _flat_keys(OmegaConf.to_container(cfg, resolve=False))


def closest(name: str, candidates: Iterable[str], count: int = 3) -> list[str]:
    """Up to ``count`` names of ``candidates`` closest to ``name`` (``difflib.get_close_matches``, cutoff
    0.6) among those at the same depth under the same parent (``trainer.lrr`` is compared with the trainer
    keys, ``intrface`` with the root keys and groups)."""
    parent = name.rpartition(".")[0]
    same_level = [c for c in dict.fromkeys(candidates) if c.rpartition(".")[0] == parent]
    leaves = {c.rpartition(".")[2]: c for c in same_level}
    found = difflib.get_close_matches(name.rpartition(".")[2], list(leaves), n=count, cutoff=0.6)
    return [leaves[leaf] for leaf in found]


def suggest(
    error: BaseException, overrides: list[str], config_dir: Path = CONFIG_DIR
) -> ConfigNameError | None:
    """A ``ConfigNameError`` for Hydra's composition ``error`` of ``overrides`` when it is an unknown key
    or config option (naming the closest names, or listing the allowed ones), else None (other errors keep
    Hydra's message)."""
    from hydra.errors import MissingConfigException

    groups = config_groups(config_dir)
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, option = str(error.missing_cfg_file).rpartition("/")
        if group not in groups:
            return None
        return ConfigNameError(unknown_option(group, option, groups[group]))
    match = re.search(r"Could not (?:override|append to|delete from) '([^']+)'", str(error))
    if match is None:
        return None
    key = match.group(1)
    try:
        keys = composed_keys(overrides, config_dir)
    except Exception:  # noqa: BLE001 - without the tree there is nothing to suggest; keep Hydra's message
        return None
    parent = key.rpartition(".")[0]
    candidates = keys + ([] if parent else [group for group in groups if "/" not in group])
    found = closest(key, candidates)
    where = f"the {parent} config" if parent else "the root config"
    if found:
        advice = _did_you_mean(found)
    else:
        siblings = sorted({c for c in candidates if c.rpartition(".")[0] == parent})
        advice = f"; its keys: {', '.join(siblings)}"
    return ConfigNameError(
        f"{key}: no such key in {where}{advice} (`python run_downstream.py --help` lists the groups and "
        "keys; `--cfg job` shows the composed config)"
    )


def _did_you_mean(found: list[str]) -> str:
    return f"; did you mean {' or '.join(found)}?" if found else ""


def unknown_option(group: str, option: str, options: list[str]) -> str:
    """The message for ``group=option`` when configs/<group>/ has no such option: the closest names
    (``closest``) and every option."""
    return (
        f"{group}={option}: configs/{group}/ has no option {option!r}{_did_you_mean(closest(option, options))}"
        f" (options: {', '.join(options)})"
    )


# -- --help ----------------------------------------------------------------------------------------
_KEY_LINE = re.compile(
    r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w]*):(?P<value>[^#]*?)(?:\s+(?P<hash>#)\s*(?P<comment>.*))?$"
)
#: Words whose period ends no sentence ("e.g. the", "Shih et al. 2025", "vs. s3prl").
_ABBREVIATIONS = ("e.g", "i.e", "incl", "etc", "vs", "al", "cf", "approx", "resp", "Fig", "Eq", "No")
#: A sentence end: '.', '?' or '!' (closing brackets or quotes may follow) before whitespace or the end.
_SENTENCE_END = re.compile(r"[.?!][)\]\"']*(?=\s|$)")
#: The page's width: a description longer than its line wraps, continued under an indent.
WIDTH = 110
#: The longest first sentence a config comment should have (about three wrapped lines; tests/test_help.py
#: holds the configs to it). A longer one is still printed whole.
DESCRIPTION_CHARS = 250
#: Groups whose options' keys are listed, after the root and trainer keys (in this order).
KEY_GROUPS = ("interface", "upstream", "task", "protocol", "logger")
#: Task config maps whose keys are not listed: the schedules and protocols maps (docs/protocols.md) and the
#: head (its keys are in the task's YAML file); ``ml_superb_updates`` (the ML-SUPERB schedules' updates) is
#: listed as one ``ml_superb_updates.*`` line with its comment.
_TASK_MAPS = ("schedules", "protocols", "protocol_sources", "head")
_LISTED_MAPS = ("ml_superb_updates",)


def _depth(text: str) -> int:
    """How many brackets are open at the end of ``text`` (a period inside "(incl. x)" ends no sentence)."""
    return sum(text.count(o) - text.count(c) for o, c in ("()", "[]", "{}"))


def first_sentence(text: str) -> str:
    """``text`` up to and including the end of its first sentence ('.', '?' or '!' before whitespace,
    outside brackets, not after an abbreviation such as "e.g."), or the whole text when no sentence ends in
    it; whitespace runs become one space. Never cuts a sentence: the description ``--help`` prints."""
    text = " ".join(text.split())
    for match in _SENTENCE_END.finditer(text):
        before = text[: match.start()]
        word = re.search(r"([A-Za-z.]+)$", before)
        if (word and word.group(1).rstrip(".") in _ABBREVIATIONS) or _depth(before) > 0:
            continue
        return text[: match.end()]
    return text


def _comment_text(line: str) -> str:
    return line.strip().lstrip("#").strip()


def file_description(path: Path) -> str:
    """The first sentence (``first_sentence``) of the YAML file's leading comment paragraph: the comment lines
    before the first key, up to an empty comment line or an indented example (``#   python ...``);
    ``# @package`` skipped."""
    paragraph: list[str] = []
    for line in path.read_text().splitlines():
        text = line.strip()
        if text.startswith("# @package"):
            continue
        if not text.startswith("#"):
            break
        body = text[1:]
        if not body.strip() or body.startswith("   "):
            break
        paragraph.append(body.strip())
    return first_sentence(" ".join(paragraph))


def key_descriptions(path: Path) -> list[tuple[str, str, str]]:
    """(dotted key, value as written, description) of every key of the YAML file ``path``: the comment after
    its value, continued on the comment lines below it that are indented deeper than the key (and are not the
    comment block of a following key), else the comment block right above the key; the description is its
    first sentence (``first_sentence``), "" for a key with no comment. A key with no value of its own (a node)
    has the value "". Nesting follows the indentation. The file's leading comment (``file_description``),
    the hydra and defaults nodes are left out."""
    lines = path.read_text().splitlines()
    first_key = next(
        (i for i, line in enumerate(lines) if line.strip() and not line.strip().startswith("#")), 0
    )
    found: list[tuple[str, str, list[str]]] = []
    stack: list[tuple[int, str]] = []
    above: list[str] = []
    current: list[str] | None = None  # the comment of the last key line, while continuation lines may follow
    current_indent = 0
    for index in range(first_key, len(lines)):
        line, text = lines[index], lines[index].strip()
        if text.startswith("#"):
            column = len(line) - len(line.lstrip())
            following = next((other for other in lines[index + 1 :] if not other.strip().startswith("#")), "")
            next_indent = len(following) - len(following.lstrip()) if following.strip() else -1
            if current is not None and column > current_indent and column != next_indent:
                current.append(_comment_text(line))
            else:
                current = None
                above.append(_comment_text(line))
            continue
        current = None
        match = _KEY_LINE.match(line)
        if not match:
            above = []
            continue
        indent = len(match.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([name for _, name in stack] + [match.group("key")])
        value = match.group("value").strip()
        if not value:
            stack.append((indent, match.group("key")))
        comment = [match.group("comment")] if match.group("hash") else above
        above = []
        if match.group("hash"):
            current, current_indent = comment, indent
        if not dotted.startswith(("hydra", "defaults")):
            found.append((dotted, value, comment))
    return [(dotted, value, first_sentence(" ".join(comment))) for dotted, value, comment in found]


def _global_package(path: Path) -> bool:
    return path.read_text().lstrip().startswith("# @package _global_")


def _wrap(head: str, text: str, indent: int) -> list[str]:
    """``head`` followed by ``text``, wrapped at ``WIDTH`` between words (a word longer than a line is not
    broken); continuation lines start with ``indent`` spaces."""
    if not text:
        return [head.rstrip()]
    return textwrap.wrap(
        text,
        width=WIDTH,
        initial_indent=head,
        subsequent_indent=" " * indent,
        break_long_words=False,
        break_on_hyphens=False,
    )


def _defaults(path: Path) -> list[str]:
    """The plain entries of the file's defaults list (``tiny``, ``whisper_small@members.whisper_small``)."""
    entries = OmegaConf.load(path).get("defaults", []) or []
    return [str(entry) for entry in entries if isinstance(entry, str) and entry != "_self_"]


def _option_lines(group: str, path: Path) -> list[str]:
    """One group option's block: its header (wrapped at ``WIDTH``) and the lines of its own keys
    (``_target_`` and the task maps left out; a node only when it has a comment)."""
    prefix = "" if _global_package(path) else f"{group}."
    lines = []
    for key, value, comment in key_descriptions(path):
        dotted = prefix + key
        parts = dotted.split(".")
        if dotted == group or parts[-1] == "_target_":
            continue
        inner = parts[1:] if parts[0] == group else parts
        if any(part in _TASK_MAPS + _LISTED_MAPS for part in inner[:-1]) or inner[-1] in _TASK_MAPS:
            continue
        if not value and not comment:
            continue  # an uncommented node: its keys are listed
        head = f"    {dotted} = {value}  # " if value else f"    {dotted}.*  # "
        lines.extend(_wrap(head, comment, 8))
    inherited = []
    for entry in _defaults(path):
        option, _, package = entry.partition("@")
        inherited.append(
            f"{group}.{package}.* as {group}={option}" if package else f"the keys of {group}={option}"
        )
    header = f"  {group}={path.stem}:"
    if inherited:
        header += f" {'; '.join(inherited)}" + ("; and:" if lines else "")
    return [*textwrap.wrap(header, WIDTH, subsequent_indent=" " * 6, break_on_hyphens=False), *lines]


def option_help(selections: list[str], config_dir: Path = CONFIG_DIR) -> str:
    """``--help group=option ...`` (e.g. ``task=sv interface=hconv``): the keys of only those options, as
    ``help_text`` lists them. ValueError naming the selection and the choices for an unknown group or option
    (with the closest name)."""
    groups = config_groups(config_dir)
    lines = []
    for selection in selections:
        group, _, option = selection.partition("=")
        if group not in KEY_GROUPS:
            raise ValueError(
                f"--help {selection}: expected <group>=<option> with a group of {', '.join(KEY_GROUPS)}"
            )
        if option not in groups[group]:
            raise ValueError(f"--help {unknown_option(group, option, groups[group])}")
        lines += [*_option_lines(group, config_dir / group / f"{option}.yaml"), ""]
    return "\n".join(lines)


def help_text(config_dir: Path = CONFIG_DIR) -> str:
    """The ``--help`` page: usage, every config group with its options (each with the first sentence of its
    file's leading comment), then the root and trainer keys and, per option, the interface, upstream, task,
    protocol and logger keys, each with the first sentence of its comment, wrapped at ``WIDTH``."""
    lines = [
        "python run_downstream.py [group=option ...] [key=value ...]   (-m: a sweep over comma-separated values)",
        "  --cfg job --resolve: the composed config with resolved values; docs/running.md explains every part.",
        "  --help task=sv interface=hconv: only the keys of those options.",
        "",
        "Config groups (group=option; the default is marked *):",
    ]
    defaults = OmegaConf.load(config_dir / "config.yaml").get("defaults", [])
    chosen = {}
    for entry in defaults:
        if isinstance(entry, dict) or OmegaConf.is_dict(entry):
            for group, option in dict(entry).items():
                chosen[str(group)] = str(option)
    groups = {
        group: options
        for group, options in config_groups(config_dir).items()
        if not group.startswith(_HYDRA_GROUPS)
    }
    for group, options in groups.items():
        lines.append(f"  {group}:")
        width = max(len(option) for option in options)
        for option in options:
            mark = "*" if chosen.get(group) == option else " "
            head = f"   {mark}{option:<{width}}  "
            lines.extend(_wrap(head, file_description(config_dir / group / f"{option}.yaml"), len(head)))
    for title, path, prefix in (
        ("Root keys (config.yaml)", config_dir / "config.yaml", ""),
        ("Trainer keys (trainer.<key>=...)", config_dir / "trainer" / "default.yaml", "trainer."),
    ):
        lines += ["", f"{title}:"]
        for key, value, comment in key_descriptions(path):
            if value or comment:
                head = f"  {prefix}{key} = {value}  # " if value else f"  {prefix}{key}.*  # "
                lines.extend(_wrap(head, comment, 6))
    for group in KEY_GROUPS:
        title = f"{group.capitalize()} keys ({group}.<key>=..., per {group}=<option>"
        if group == "task":
            title += "; the head and the schedules/protocols maps: the task's YAML file, docs/protocols.md"
        lines += ["", *textwrap.wrap(title + "):", WIDTH, subsequent_indent="  ")]
        for option in groups[group]:
            lines.extend(_option_lines(group, config_dir / group / f"{option}.yaml"))
    lines += ["", "Unknown keys and options are refused with the closest names (no `+key=` needed)."]
    return "\n".join(lines) + "\n"
