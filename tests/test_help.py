"""``python run_downstream.py --help``: every description it prints is a clean cut of the config comment it
comes from, checked against the YAML files' raw comment lines (an independent reading: the comment is
collected here from the file's lines, not by config_help's parser)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from downstream.training.config_help import CONFIG_DIR, description, first_sentence, help_text

#: a sentence end (the printed text may stop after it) and a clause boundary (the text may stop before it)
SENTENCE_END = re.compile(r"[.?!][)\]\"']*$")
CLAUSE_MARKS = ";:"


def balanced(text: str) -> bool:
    return all(text.count(o) == text.count(c) for o, c in ("()", "[]", "{}"))


def clean_cut(printed: str, comment: str) -> bool:
    """Whether ``printed`` is the whole ``comment``, or a prefix of it that ends a sentence (before
    whitespace) or stops right before a clause boundary (';' or ':'), with its brackets closed and not
    after an abbreviation."""
    if printed == comment:
        return True
    if (
        not comment.startswith(printed)
        or not balanced(printed)
        or re.search(r"\b(e\.g|i\.e|incl)\.$", printed)
    ):
        return False
    following = comment[len(printed)]
    return bool(SENTENCE_END.search(printed)) and following == " " or following in CLAUSE_MARKS


def joined(lines: list[str]) -> str:
    return " ".join(" ".join(line.strip().lstrip("#").strip() for line in lines).split())


def leading_comment(path: Path) -> str:
    """The comment lines at the top of the file (before its first key), ``# @package`` left out."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.strip().startswith("#"):
            break
        if not line.strip().startswith("# @package"):
            lines.append(line)
    return joined(lines)


def key_comments(path: Path, leaf: str, value: str) -> list[str]:
    """The comments that may be the key's, for every line of ``path`` that sets ``leaf: value``: the one after
    the value with all the comment lines that follow it, and each shorter run of those that the next comment
    line ends by starting at or left of the key (the comment of another key); else the comment lines right
    above the key."""
    lines = path.read_text().splitlines()
    found = []
    pattern = re.compile(rf"^(\s*){re.escape(leaf)}:\s*{re.escape(value)}\s*(#.*)?$")
    for index, line in enumerate(lines):
        match = pattern.match(line)
        if not match:
            continue
        if match.group(2):
            # the inline comment, then each following comment line; a cut after line k is clean when line
            # k+1 starts at or left of the key (the comment of another key)
            indent = len(match.group(1))
            text, cuts = [match.group(2)], []
            for other in lines[index + 1 :]:
                if not other.strip().startswith("#"):
                    break
                column = len(other) - len(other.lstrip())
                if column <= indent:
                    cuts.append(joined(text))
                text.append(other)
            found += [joined(text), *cuts]
        else:
            start = index
            while start > 0 and lines[start - 1].strip().startswith("#"):
                start -= 1
            found.append(joined(lines[start:index]))
    return found


def printed_descriptions() -> list[tuple[Path, str, str, str]]:
    """(file, key or option, value, description) of every line of the help page that has a description."""
    entries = []
    section: Path | None = None
    group = None
    for line in help_text().splitlines():
        if line.startswith("Root keys"):
            section = CONFIG_DIR / "config.yaml"
        elif line.startswith("Trainer keys"):
            section = CONFIG_DIR / "trainer" / "default.yaml"
        elif match := re.match(r"^  task=(\w+):$", line):
            section = CONFIG_DIR / "task" / f"{match.group(1)}.yaml"
        elif section is None and (match := re.match(r"^  ([\w/]+):$", line)):
            group = match.group(1)
        elif section is None and group and (match := re.match(r"^   [ *](\w+) +(\S.*)$", line)):
            entries.append(
                (CONFIG_DIR / group / f"{match.group(1)}.yaml", match.group(1), "", match.group(2))
            )
        elif section is not None and (match := re.match(r"^ +([\w.]+?)(?: = (.*?)|\.\*)  # (.*)$", line)):
            entries.append((section, match.group(1), match.group(2) or "", match.group(3)))
    return entries


def test_every_printed_description_is_a_clean_cut_of_its_comment():
    entries = printed_descriptions()
    options = [
        entry for entry in entries if not entry[2] and "." not in entry[1] and entry[0].parent != CONFIG_DIR
    ]
    assert len(entries) > 150 and len(options) >= 40  # every group option and key line was read
    for path, name, value, printed in entries:
        if path.stem == name and path.parent.parent == CONFIG_DIR:  # a group option: its file's description
            comment = leading_comment(path)
            assert clean_cut(printed, comment), f"{path.name}: {printed!r} cuts {comment!r}"
            continue
        comments = key_comments(path, name.rpartition(".")[2], value)
        assert comments, f"{path}: no line sets {name}: {value}"
        assert any(clean_cut(printed, text) for text in comments), (
            f"{path.name} {name}: {printed!r} cuts {comments}"
        )


def test_the_issue_examples_end_at_a_boundary():
    text = help_text()
    fusion = re.search(r"^ +fusion_table1 +(.*)$", text, flags=re.MULTILINE).group(1)
    assert fusion.endswith("docs/fusion.md)")  # the title, not "...Speech Foundation Models","
    hf = re.search(r"^ +hf +(.*)$", text, flags=re.MULTILINE).group(1)
    assert not hf.endswith("(incl.")
    # no key line takes the file's leading comment, nor a package directive, nor doubles task.
    assert "@package" not in text and "task.task." not in text and "task._target_" not in text


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
    ],
)
def test_first_sentence(comment, expected):
    assert first_sentence(comment) == expected


def test_a_long_sentence_ends_at_its_last_clause_boundary():
    long = "Title (a; b): " + "word " * 30 + "more; " + "tail " * 30 + "end."
    assert description(long, limit=200) == ("Title (a; b): " + "word " * 30 + "more")
    assert description(long, limit=10_000) == long
