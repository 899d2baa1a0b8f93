"""Write docs/protocols.md, the conformance table, from the configs; ``--check`` fails when it is stale.

    python scripts/make_protocols_doc.py           # rewrite docs/protocols.md
    python scripts/make_protocols_doc.py --check   # exit 1 when docs/protocols.md differs (CI runs this)

The page is ``docs/protocols.in.md`` (the hand-written part) with its ``<!-- TABLES -->`` line replaced by
tables built from:

- ``configs/protocol/*.yaml``: the keys the protocol group itself sets (the upstream's padding), with the
  comment written above each key;
- each ``configs/task/<task>.yaml``: every key of its ``protocols`` map (value under superb and exact) with
  its ``protocol_sources`` entry, then its SUPERB schedule (``schedules.superb``; keys it leaves out take
  the trainer's defaults, ``configs/trainer/default.yaml``), the same under both protocols, with the
  ``protocol_sources`` entry ``schedules.superb`` as its source.

A task key that reads ``${protocol:<key>}`` must have a value under every protocol and a source: the script
stops with a message naming the task and key otherwise, so a new protocol setting cannot reach the docs
(or CI) without them. Adding a row needs only the task config's maps.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "docs" / "protocols.in.md"
OUTPUT = ROOT / "docs" / "protocols.md"
MARKER = "<!-- TABLES -->"
PROTOCOLS = ("superb", "exact")
#: the schedule keys the trainer reads (configs/trainer/default.yaml ``${schedule:<key>}``), in table order
SCHEDULE_KEYS = (
    "optimizer",
    "weight_decay",
    "lr",
    "batch_size",
    "grad_accum",
    "grad_clip",
    "max_steps",
    "eval_every",
    "test_every",
)
_PROTOCOL_REFERENCE = re.compile(r"\$\{protocol:([A-Za-z_][A-Za-z0-9_]*)\}")
_SCHEDULE_DEFAULT = re.compile(r"^\$\{schedule:([a-z_]+),([^}]*)\}$")


class ProtocolDocError(ValueError):
    """A task config whose protocol settings cannot be tabled (a value or a source is missing)."""


def task_node(task: str) -> Any:
    """The raw (unresolved) task node of configs/task/<task>.yaml (``task:`` of a ``@package _global_`` file)."""
    path = ROOT / "configs" / "task" / f"{task}.yaml"
    config = OmegaConf.load(path)
    first_line = path.read_text().splitlines()[0] if path.read_text() else ""
    return config.task if "@package _global_" in first_line else config


def trainer_defaults() -> dict[str, Any]:
    """The values configs/trainer/default.yaml uses where a schedule leaves a key out (``${schedule:k,d}``)."""
    trainer = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "trainer" / "default.yaml"))
    defaults = {}
    for key, value in trainer.items():
        match = _SCHEDULE_DEFAULT.match(str(value))
        if match:
            defaults[key] = yaml.safe_load(match.group(2))
    return defaults


def superb_settings(task: str) -> dict[str, dict[str, Any]]:
    """Every protocol setting of ``task``: {key: {superb, exact, source}}; the protocol keys first, then
    ``trainer.<key>`` for each schedule key. ProtocolDocError names a missing value or source."""
    node = task_node(task)
    raw = OmegaConf.to_container(node, resolve=False)
    protocols = raw.get("protocols") or {}
    sources = raw.get("protocol_sources") or {}
    referenced = set(_PROTOCOL_REFERENCE.findall(OmegaConf.to_yaml(node)))
    keys = list(
        dict.fromkeys(
            [*sorted(referenced), *(protocols.get("superb") or {}), *(protocols.get("exact") or {})]
        )
    )
    rows: dict[str, dict[str, Any]] = {}
    for key in keys:
        for protocol in PROTOCOLS:
            if key not in (protocols.get(protocol) or {}):
                raise ProtocolDocError(
                    f"configs/task/{task}.yaml: protocols.{protocol} does not set {key!r} (every key read "
                    "through ${protocol:...} needs a value under superb and exact)"
                )
        if not sources.get(key):
            raise ProtocolDocError(
                f"configs/task/{task}.yaml: protocol_sources has no entry for {key!r} (the s3prl or ESPnet file, "
                "line and key of its superb value)"
            )
        rows[f"task.{key}"] = {
            "superb": protocols["superb"][key],
            "exact": protocols["exact"][key],
            "source": sources[key],
        }
    schedule = (raw.get("schedules") or {}).get("superb") or {}
    defaults = trainer_defaults()
    for key in SCHEDULE_KEYS:
        if key in schedule:
            value = schedule[key]
        elif key in defaults:
            value = defaults[key]
        else:
            continue
        source = sources.get("schedules.superb") or "—"
        rows[f"trainer.{key}"] = {"superb": value, "exact": value, "source": source}
    return rows


def protocol_group_rows() -> list[tuple[str, dict[str, Any], str]]:
    """(key, {protocol: value}, the comment above the key in superb.yaml) for the protocol group's keys."""
    configs = {p: OmegaConf.load(ROOT / "configs" / "protocol" / f"{p}.yaml") for p in PROTOCOLS}
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in (ROOT / "configs" / "protocol" / "superb.yaml").read_text().splitlines():
        if line.startswith("#"):
            pending.append(line.lstrip("# ").strip())
        elif ":" in line:
            comments[line.split(":", 1)[0].strip()] = " ".join(pending)
            pending = []
    keys = [key for key in configs["superb"] if key != "name"]
    return [(key, {p: configs[p].get(key) for p in PROTOCOLS}, comments.get(key, "")) for key in keys]


def shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`"


def tables() -> str:
    lines = [
        "## The protocol group (`configs/protocol/`)",
        "",
        "| setting | superb | exact | what it is |",
        "|---|---|---|---|",
    ]
    for key, values, comment in protocol_group_rows():
        lines.append(
            f"| `protocol.{key}` | {shown(values['superb'])} | {shown(values['exact'])} | {comment} |"
        )
    tasks = sorted(path.stem for path in (ROOT / "configs" / "task").glob("*.yaml"))
    lines += ["", "## Task by task", ""]
    for task in tasks:
        rows = superb_settings(task)
        lines += [
            f"### `task={task}`",
            "",
            "| setting | superb | exact | source of the superb value |",
            "|---|---|---|---|",
        ]
        for key, row in rows.items():
            differs = " **≠**" if row["superb"] != row["exact"] else ""
            lines.append(
                f"| `{key}` | {shown(row['superb'])} | {shown(row['exact'])}{differs} | {row['source']} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render() -> str:
    """The whole page: the template with its marker line replaced by ``tables()``."""
    template = TEMPLATE.read_text()
    if MARKER not in template:
        raise ProtocolDocError(f"{TEMPLATE} has no '{MARKER}' line where the tables go")
    header = (
        "<!-- Generated by scripts/make_protocols_doc.py from docs/protocols.in.md and the configs: "
        "edit those, then run the script. -->\n"
    )
    return header + template.replace(MARKER, tables().rstrip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the page is stale, writing nothing")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="the page to write or check")
    args = parser.parse_args(argv)
    try:
        page = render()
    except ProtocolDocError as error:
        print(f"make_protocols_doc: {error}", file=sys.stderr)
        return 2
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != page:
            print(
                f"{args.output} is stale (it differs from what the configs give): run "
                "python scripts/make_protocols_doc.py",
                file=sys.stderr,
            )
            return 1
        return 0
    args.output.write_text(page)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
