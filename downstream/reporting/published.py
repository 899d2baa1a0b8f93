"""Published numbers to show beside ours, loaded from ``published.yaml`` beside this module.

The file names the published models (with the names an upstream may carry) and, per source, a table of
values per model and interface; ``published_reference`` finds the number for a (model, interface, task).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from interfaces.configs import interface_config_names

DATA_FILE = Path(__file__).with_name("published.yaml")
#: The paper's training conditions besides the standard one (''): its Table 3 widens the head by HConv's
#: interface parameters, its Table 4 fine-tunes the upstream end to end (a source's ``condition:``).
CONDITIONS = ("", "larger head", "fine-tuned", "fine-tuned, larger head")
#: How a fused upstream's label joins its members (upstream.fusion.MEMBER_SEPARATOR) and a published
#: fused model's name joins its members' ("Whisper Small + WavLM Base+").
FUSION_SEPARATOR = " + "


@dataclass(frozen=True)
class Reference:
    """A published value (percent) and the short name of its source (e.g. "paper T2")."""

    value: float
    source: str


@dataclass(frozen=True)
class PublishedNumbers:
    models: tuple[str, ...]  # published models, in the order table rows are sorted
    aliases: dict[str, str]  # normalised upstream name -> published model
    references: dict[tuple[str, str, str], Reference]  # (model, interface, task) -> value, standard condition
    #: (model, interface, task, condition) -> value for the paper's other conditions (``CONDITIONS``)
    conditioned: dict[tuple[str, str, str, str], Reference]
    citations: dict[str, str]  # source name -> full citation


def _normalise_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def load_published(path: Path = DATA_FILE) -> PublishedNumbers:
    """Read and check ``path``; ValueError naming the file and the entry that does not fit."""
    data = yaml.safe_load(path.read_text())
    models = data["models"]
    references: dict[tuple[str, str, str], Reference] = {}
    conditioned: dict[tuple[str, str, str, str], Reference] = {}
    citations = {}
    interfaces = interface_config_names()
    for source in data["sources"]:
        name, columns = source["name"], source["columns"]
        condition = source.get("condition", "")
        if condition not in CONDITIONS:
            raise ValueError(
                f"{path}: source {name!r} has condition {condition!r}; expected one of {CONDITIONS}"
            )
        citations[name] = source["citation"]
        for task, column in source["tasks"].items():
            if column not in columns:
                raise ValueError(f"{path}: source {name!r} maps task {task!r} to unknown column {column!r}")
        for model, rows in source["rows"].items():
            if model not in models:
                raise ValueError(f"{path}: source {name!r} has a row for {model!r}, not under models:")
            for interface, values in rows.items():
                if interface not in interfaces:
                    raise ValueError(
                        f"{path}: {name} / {model} names interface {interface!r}, which is not a config in "
                        f"configs/interface/ ({interfaces})"
                    )
                if len(values) != len(columns):
                    raise ValueError(
                        f"{path}: {name} / {model} / {interface} has {len(values)} values "
                        f"for {len(columns)} columns {columns}"
                    )
                for task, column in source["tasks"].items():
                    value = float(values[columns.index(column)])
                    if condition:
                        conditioned.setdefault((model, interface, task, condition), Reference(value, name))
                    else:
                        references.setdefault((model, interface, task), Reference(value, name))
    aliases = {_normalise_name(alias): model for model, names in models.items() for alias in names}
    return PublishedNumbers(tuple(models), aliases, references, conditioned, citations)


PUBLISHED = load_published()


def paper_model(upstream_label: str) -> str | None:
    """The published model an upstream label names ("hubert (s3prl)" -> "HuBERT Base"; a fused upstream's
    "openai/whisper-small (hf) + wavlm_base_plus (s3prl)" -> "Whisper Small + WavLM Base+"), or None; None also
    for a model with random weights ("HUBERT_BASE (torchaudio, random init)": the architecture, not the model)."""
    if FUSION_SEPARATOR in upstream_label:  # a fused upstream: "<member> + <member>", each a published model
        parts = [paper_model(part) for part in upstream_label.split(FUSION_SEPARATOR)]
        joined = FUSION_SEPARATOR.join(part or "" for part in parts)
        return joined if all(parts) and joined in PUBLISHED.models else None
    match = re.fullmatch(r"\s*(.+?)\s*\(([^()]*)\)\s*", upstream_label)
    if match and "random init" in match.group(2):
        return None
    name = match.group(1) if match else upstream_label
    return PUBLISHED.aliases.get(_normalise_name(name))


def published_reference(
    model: str | None, interface: str, task: str, condition: str = ""
) -> Reference | None:
    """The published number for the model (see ``paper_model``), interface config name, task and
    ``condition`` (``CONDITIONS``: '' for a frozen upstream with the standard head), or None."""
    if not model:
        return None
    if condition:
        return PUBLISHED.conditioned.get((model, interface, task, condition))
    return PUBLISHED.references.get((model, interface, task))
