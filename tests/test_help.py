"""``python run_downstream.py --help``: it lists every key of the configs it covers, each with the whole first
sentence of its config comment, and lays the option names and descriptions out in columns that never touch.
The keys come from ``yaml.safe_load`` of the files and the comments from the files' raw lines, read here
(not by config_help's parser); the page is parsed back from its printed text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from downstream.training.config_help import (
    CONFIG_DIR,
    DESCRIPTION_CHARS,
    WIDTH,
    first_sentence,
    help_text,
    option_help,
)

#: the groups whose options' keys the page lists, besides the root config and the trainer
KEY_GROUPS = ("interface", "upstream", "task", "protocol", "logger")
#: task subtrees whose keys the page leaves to the YAML files and docs/protocols.md (it says so)
UNLISTED_MAPS = {"schedules", "protocols", "protocol_sources", "head", "ml_superb_updates"}
SENTENCE_END = re.compile(r"[.?!][)\]\"']*$")
KEY_ENTRY = re.compile(r"^(?P<indent> +)(?P<key>[\w.]+?)(?: = (?P<value>.*?)|\.\*)(?:  # (?P<text>.*)|  #)?$")


# -- the page, parsed back ------------------------------------------------------------------------------------
def parse(text: str) -> dict:
    """{"options": [[group, option, description column, description]], "keys": {section: {key: (value,
    description)}}} with wrapped descriptions joined; a section is "root", "trainer" or "<group>=<option>".
    An option's continuation line must start at its description column."""
    options, keys = [], {}
    part, group, section, entry = "head", None, None, None
    for line in text.splitlines():
        if line.startswith("Config groups"):
            part = "groups"
            continue
        if line.startswith("Root keys"):
            part, section = "keys", "root"
        elif line.startswith("Trainer keys"):
            part, section = "keys", "trainer"
        elif line.startswith(tuple(f"{g.capitalize()} keys" for g in KEY_GROUPS)):
            part, section = "keys", None
        if not line.strip() or line.startswith(("Root", "Trainer", "Unknown")):
            entry = None
            continue
        if part == "groups":
            if match := re.match(r"^  ([\w/]+):$", line):
                group = match.group(1)
            elif match := re.match(r"^   [ *](\w+)( +)(\S.*)?$", line):
                column = 4 + len(match.group(1)) + len(match.group(2))
                entry = [group, match.group(1), column, match.group(3) or ""]
                options.append(entry)
            else:  # a continuation: it starts at the description column
                assert entry is not None and line.startswith(" " * entry[2]) and line[entry[2]] != " ", line
                entry[3] += " " + line.strip()
        elif part == "keys":
            if match := re.match(r"^  (\w+)=(\w+):", line):
                section, entry = f"{match.group(1)}={match.group(2)}", [5, "", ""]  # a header wraps at 6
                keys.setdefault(section, {})
            elif entry is not None and len(line) - len(line.lstrip()) > entry[0]:
                entry[2] += " " + line.strip()  # a wrapped description (or of a header line)
            elif match := KEY_ENTRY.match(line):
                entry = [len(match.group("indent")), match.group("key"), match.group("text") or ""]
                keys.setdefault(section, {})[match.group("key")] = entry
                entry.append(match.group("value") or "")
            elif line.startswith(("Interface", "Upstream", "Task", "Protocol", "Logger")):
                entry = [0, "", ""]  # a section title, wrapped
            else:
                raise AssertionError(f"unparsed help line: {line!r}")
    key_map = {
        section: {key: (entry[3], entry[2]) for key, entry in found.items()}
        for section, found in keys.items()
    }
    return {"options": options, "keys": key_map}


@pytest.fixture(scope="module")
def page() -> dict:
    return parse(help_text())


# -- the configs, read independently --------------------------------------------------------------------------
def leaves(node: object, prefix: str = "") -> list[str]:
    """Dotted keys of the leaves (a value that is not a non-empty mapping) of a loaded YAML mapping."""
    found = []
    for key, value in (node or {}).items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            found += leaves(value, dotted + ".")
        else:
            found.append(dotted)
    return found


def listed_files() -> list[tuple[str, Path, str]]:
    """(section, file, key prefix) of every config whose keys the page lists."""
    files = [
        ("root", CONFIG_DIR / "config.yaml", ""),
        ("trainer", CONFIG_DIR / "trainer" / "default.yaml", "trainer."),
    ]
    for group in KEY_GROUPS:
        for path in sorted((CONFIG_DIR / group).glob("*.yaml")):
            global_package = path.read_text().startswith("# @package _global_")
            files.append((f"{group}={path.stem}", path, "" if global_package else f"{group}."))
    return files


def expected_keys(path: Path, prefix: str) -> list[str]:
    keys = []
    for key in leaves(yaml.safe_load(path.read_text()), prefix):
        parts = key.split(".")
        if key.removeprefix(prefix).split(".")[0] in ("defaults", "hydra") or parts[-1] == "_target_":
            continue
        if any(part in UNLISTED_MAPS for part in parts[1:-1] if parts[0] == "task") or (
            parts[0] == "ml_superb_updates"
        ):
            continue
        if parts[0] == "task" and parts[1] in UNLISTED_MAPS:
            continue
        keys.append(key)
    return keys


def joined(lines: list[str]) -> str:
    return " ".join(" ".join(line.strip().lstrip("#").strip() for line in lines).split())


def leading_comment(path: Path) -> str:
    """The comment lines at the top of the file up to the first key, empty comment line or indented example."""
    lines = []
    for line in path.read_text().splitlines():
        if (
            not line.strip().startswith("#")
            or not line.strip().lstrip("#").strip()
            or line.startswith("#   ")
        ):
            break
        if not line.startswith("# @package"):
            lines.append(line)
    return joined(lines)


def key_comments(path: Path, leaf: str, value: str) -> list[str]:
    """The comments that may be the key's, for every line of ``path`` that sets ``leaf: value``: the one after
    the value with the comment lines that follow it, and each shorter run of those that the next comment line
    ends by starting at or left of the key; else the comment lines right above the key."""
    lines = path.read_text().splitlines()
    found = []
    pattern = re.compile(rf"^(\s*){re.escape(leaf)}:\s*{re.escape(value)}\s*(#.*)?$")
    for index, line in enumerate(lines):
        match = pattern.match(line)
        if not match:
            continue
        if match.group(2):
            indent = len(match.group(1))
            text, cuts = [match.group(2)], []
            for other in lines[index + 1 :]:
                if not other.strip().startswith("#"):
                    break
                if len(other) - len(other.lstrip()) <= indent:
                    cuts.append(joined(text))
                text.append(other)
            found += [joined(text), *cuts]
        else:
            start = index
            while start > 0 and lines[start - 1].strip().startswith("#"):
                start -= 1
            found.append(joined(lines[start:index]))
    return found


def whole_first_sentence(printed: str, comment: str) -> bool:
    """Whether ``printed`` is the whole ``comment`` or a prefix of it that ends a sentence: never a fragment
    cut at a ':' or ';' inside the sentence."""
    if printed == comment:
        return True
    return (
        comment.startswith(printed)
        and bool(SENTENCE_END.search(printed))
        and comment[len(printed)] == " "
        and all(printed.count(o) == printed.count(c) for o, c in ("()", "[]", "{}"))
        and not re.search(r"\b(e\.g|i\.e|incl|al|vs)\.$", printed)
    )


# -- the tests -----------------------------------------------------------------------------------------------
def test_every_key_of_the_listed_configs_appears_with_a_description(page):
    missing, bare = [], []
    count = 0
    for section, path, prefix in listed_files():
        listed = page["keys"].get(section, {})
        for key in expected_keys(path, prefix):
            count += 1
            if key not in listed:
                missing.append(f"{section}: {key}")
            elif not listed[key][1].strip():
                bare.append(f"{path.relative_to(CONFIG_DIR)}: {key}")
    assert count > 250  # the root, trainer, interface, upstream, task, protocol and logger keys were read
    assert not missing, f"keys --help does not list: {missing}"
    assert not bare, f"keys without a description (add a comment in the config): {bare}"


def test_every_option_is_listed_with_its_files_first_sentence(page):
    listed = {(group, option): text for group, option, _, text in page["options"]}
    for path in CONFIG_DIR.glob("*/*.yaml"):
        printed = listed.get((path.parent.name, path.stem))
        assert printed, f"{path}: not listed with a description"
        assert whole_first_sentence(printed, leading_comment(path)), f"{path.name}: {printed!r}"


def test_every_key_description_is_the_whole_first_sentence_of_its_comment(page):
    files = {section: path for section, path, _ in listed_files()}
    checked = 0
    for section, found in page["keys"].items():
        for key, (value, printed) in found.items():
            if not printed:
                continue
            comments = key_comments(files[section], key.rpartition(".")[2], value)
            assert comments, f"{files[section]}: no line sets {key}: {value}"
            assert any(whole_first_sentence(printed, text) for text in comments), f"{key}: {printed!r}"
            checked += 1
    assert checked > 250


def test_no_description_is_a_fragment_or_too_long(page):
    descriptions = [text for *_, text in page["options"]]
    descriptions += [text for found in page["keys"].values() for _, text in found.values()]
    for text in descriptions:
        assert len(text.split()) >= 3, f"a fragment, not a description: {text!r}"
        assert not text.rstrip().endswith((":", ";", ",")), text
        assert len(text) <= DESCRIPTION_CHARS, f"shorten the comment's first sentence: {text!r}"


def test_option_names_never_touch_their_descriptions(page):
    columns: dict[str, set[int]] = {}
    for group, option, column, _ in page["options"]:
        assert column >= 4 + len(option) + 2, f"{group}={option} runs into its description"
        columns.setdefault(group, set()).add(column)
    assert all(len(found) == 1 for found in columns.values()), columns  # one column per group
    assert all(len(line) <= WIDTH for line in help_text().splitlines())  # wrapped, not cut


def test_the_trial_examples_print_whole_sentences(page):
    options = {(group, option): text for group, option, _, text in page["options"]}
    assert options[("task", "ic")].endswith("accuracy when all three are right.")
    assert options[("upstream", "whisper_small_wavlm_base_plus")].startswith("The fusion paper's pair")
    sv = page["keys"]["task=sv"]
    assert (
        sv["task.am_softmax_scale"][1] != "AM-softmax s"
        and sv["task.gain_db"][1] != "Audio as s3prl reads it"
    )
    assert page["keys"]["interface=weighted_sum"]["interface.normalize"][1]
    assert page["keys"]["upstream=tiny_pretrained"]["upstream.checkpoint"][1]
    text = help_text()
    assert "@package" not in text and "task.task." not in text and "_target_" not in text


@pytest.mark.parametrize(
    ("comment", "expected"),
    [
        (
            "One hidden state, unchanged; no parameters. Probe layer by layer.",
            "One hidden state, unchanged; no parameters.",
        ),
        ("A model, e.g. HuBERT. More.", "A model, e.g. HuBERT."),
        ("wav2vec 2.0 (incl. XLS-R), HuBERT. More.", "wav2vec 2.0 (incl. XLS-R), HuBERT."),
        ("no sentence end here", "no sentence end here"),
        ("Speech Commands v0.01, 12 classes.", "Speech Commands v0.01, 12 classes."),
        (
            "Intent classification (SUPERB IC): Fluent Speech Commands. More.",
            "Intent classification (SUPERB IC): Fluent Speech Commands.",
        ),
    ],
)
def test_first_sentence(comment, expected):
    assert first_sentence(comment) == expected


def test_help_for_chosen_options_lists_only_their_keys():
    """``--help task=sv interface=hconv``: every key of those two files, no other option's keys."""
    page = option_help(["task=sv", "interface=hconv"])
    for group, option in (("task", "sv"), ("interface", "hconv")):
        values = yaml.safe_load((CONFIG_DIR / group / f"{option}.yaml").read_text())
        scalars = [key for key, value in values.items() if key != "_target_" and not isinstance(value, dict)]
        assert scalars and all(f"    {group}.{key} = " in page for key in scalars), (group, option)
    assert "task.language" not in page and "interface.nhead" not in page  # ml_mono's, cls_pooling's
    with pytest.raises(ValueError, match="no option 'svv'; did you mean sv"):
        option_help(["task=svv"])
