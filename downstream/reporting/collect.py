"""Finding finished runs under sweep directories and giving each its table row (upstream x interface).

Published numbers were computed under ``protocol=superb`` (docs/protocols.md): only rows of superb runs (or
of records written before results.json had ``protocol``) are compared with them. A row of another protocol
is labelled ``protocol=<name>`` and gets none; rows of mixed protocols are each labelled; the notes (the
table's footer) name the protocol.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from downstream.reporting.lr_choice import LR_KEYS, choice_notes, choose_learning_rates
from downstream.reporting.published import PUBLISHED, paper_model
from downstream.results import HYDRA_DIR, RunResults, scan_runs

SUPERB_PROTOCOL = "superb"  # the protocol published numbers were computed with

# Overrides that never tell rows apart: replicates (seed, fold), the row and column keys themselves,
# where the data lives, and settings that do not change what is trained.
REPLICATE_OR_KEY_OVERRIDES = {
    "seed",
    "task.fold",
    "task.language",  # ML-SUPERB monolingual: the published number averages the language sets
    "task",
    "interface",
    "upstream",
    "upstream.name",
    "experiment",
    "lr_search.grid",  # the grid of a learning-rate search (its runs differ in trainer.lr)
    "task.data_root",
    "overwrite",
    "logger",
    "schedule",
    "protocol",  # read from results.json instead (rows of another protocol than superb are labelled)
    "task.head.extra_params",  # shown as "+ larger head"
    "task.duration",  # ML-SUPERB: the 10-minute sets are columns of their own (aggregate.py)
    "trainer.device",
    "trainer.num_workers",
    "trainer.progress_bar",
}
IGNORED_OVERRIDE_PREFIXES = ("hydra.", "hydra/", "logger.", "paths.")


@dataclass(frozen=True)
class RowKey:
    """One table row: an upstream and an interface, with what distinguishes this row's runs."""

    # display labels, e.g. "hubert (s3prl), fine-tuned" and "weighted_sum + larger head (+4,424,832)"
    upstream: str
    interface: str
    interface_name: str  # the interface config name (configs/interface/<name>.yaml)
    model: str | None  # the published model the upstream is, if any
    comparable: bool  # the paper's settings (published.CONDITIONS), not the demo schedule, not protocol=exact
    condition: str = ""  # '', 'larger head', 'fine-tuned' or 'fine-tuned, larger head' (published.CONDITIONS)
    #: the upstream as figures name it: a fused upstream's member names joined by '+'
    #: ("whisper_small+wavlm_base_plus"), else ``upstream``; not part of the row's identity
    short_upstream: str = field(default="", compare=False)

    @property
    def label(self) -> str:
        return f"{self.upstream} / {self.interface}"

    @property
    def shown_upstream(self) -> str:
        """The upstream as tables and figures show it: ``short_upstream``, else ``upstream``."""
        return self.short_upstream or self.upstream

    @property
    def short_label(self) -> str:
        """The label figures draw: ``shown_upstream / interface``."""
        return f"{self.shown_upstream} / {self.interface}"


@dataclass(frozen=True)
class Run:
    """A finished run: its name (its directory relative to the parent of the sweep directory it was found
    in), directory, results and row."""

    name: str
    run_dir: Path
    results: RunResults
    row: RowKey


@dataclass
class Collection:
    runs: list[Run]
    incomplete: list[Path]
    notes: list[str] = field(default_factory=list)
    #: only each learning-rate search's chosen runs, one row per search (``collect_runs(chosen_lr=True)``)
    chosen_lr: bool = False


def parse_override(text: str) -> tuple[str, str]:
    """('interface.num_groups', '3') from 'interface.num_groups=3' (also '+key=v', '++key=v', '~key')."""
    key, _, value = text.lstrip("~+").partition("=")
    return key.strip(), value.strip()


def run_setting(run: Run, key: str) -> str | None:
    """A task setting of a run (e.g. ``task.duration``): its override, else its saved config, else None."""
    for override in run.results.overrides:
        name, value = parse_override(override)
        if name == key:
            return value
    config_path = run.run_dir / HYDRA_DIR / "config.yaml"
    if config_path.is_file():
        value = OmegaConf.select(OmegaConf.load(config_path), key, default=None)
        return None if value is None else str(value)
    return None


def ml_superb_settings(run: Run) -> tuple[tuple[str, str | None], ...]:
    """(('set', task.language), ('duration', task.duration)) of an ML-SUPERB run (task ml_*, lid), else ():
    settings that do not define a row but tell apart runs that are not repeats of one another (the sets a
    monolingual cell averages; the 10-minute and 1-hour columns)."""
    if not (run.results.task.startswith("ml_") or run.results.task == "lid"):
        return ()
    return (("set", run_setting(run, "task.language")), ("duration", run_setting(run, "task.duration")))


def _row_defining(key: str, ignore: frozenset[str] = frozenset()) -> bool:
    return (
        key not in REPLICATE_OR_KEY_OVERRIDES
        and key not in ignore
        and not key.startswith(IGNORED_OVERRIDE_PREFIXES)
    )


def _names_model(key: str) -> bool:
    """An upstream override that only names which model is loaded (``upstream.model``, a fusion member's
    ``upstream.members.<m>.name`` or its source group ``upstream@upstream.members.<m>``): the upstream
    label says which model it is, and whether that is a published one (``paper_model``)."""
    return key.startswith("upstream@") or (
        key.startswith("upstream.") and key.rsplit(".", 1)[-1] in ("model", "name")
    )


def _changes_model(overrides: dict[str, str]) -> bool:
    """Whether overrides change the interface or the task's model (trainer settings such as the learning
    rate, which SUPERB lets one tune, do not make a row incomparable with published numbers; nor does naming
    the upstream model, ``_names_model``)."""
    return any(
        key.startswith(("interface.", "task.", "upstream.")) and not _names_model(key) for key in overrides
    )


def head_extra_params(run_dir: Path, results: RunResults) -> int | None:
    """task.head.extra_params of a run: from its overrides, else from its saved Hydra config, else None."""
    for override in results.overrides:
        key, value = parse_override(override)
        if key == "task.head.extra_params":
            return None if value.lower() in ("null", "none", "") else int(float(value))
    config_path = run_dir / HYDRA_DIR / "config.yaml"
    if not config_path.is_file():
        return None
    try:
        value = OmegaConf.select(OmegaConf.load(config_path), "task.head.extra_params", default=None)
    except Exception as error:  # an interpolation that cannot resolve outside the run
        raise ValueError(f"{config_path}: cannot read task.head.extra_params ({error})") from error
    return None if value is None else int(value)


def _run_name(run_dir: Path, roots: Sequence[Path]) -> str:
    for root in roots:
        if run_dir.is_relative_to(root):
            return str(run_dir.relative_to(root.parent))
    return run_dir.name


def _upstream_key(key: str) -> bool:
    """An override of the upstream (``upstream.model``, ``upstream.members.whisper.whisper_window``, the
    fusion member group ``upstream@upstream.members.whisper``): the table's upstream column names it."""
    return key.startswith(("upstream.", "upstream@"))


def _shared(overrides: Sequence[dict[str, str]]) -> set[tuple[str, str]]:
    """The (key, value) pairs every one of ``overrides`` has."""
    common = set(overrides[0].items()) if overrides else set()
    for one in overrides[1:]:
        common &= set(one.items())
    return common


def short_keys(keys: Iterable[str]) -> dict[str, str]:
    """How a row label writes each override key: ``interface.`` dropped (``num_groups``); a key of three or
    more parts by its shortest ending of at least two parts that no other of ``keys`` ends with
    (``upstream.members.whisper.whisper_window`` -> ``whisper.whisper_window``, ``task.head.hidden_dims`` ->
    ``head.hidden_dims``); others as they are (``trainer.lr``)."""
    keys = sorted(set(keys))
    shown = {}
    for key in keys:
        if key.startswith("interface."):
            shown[key] = key.removeprefix("interface.")
            continue
        parts = key.split(".")
        shown[key] = key
        for size in range(2, len(parts)):
            ending = ".".join(parts[-size:])
            if not any(other != key and (other == ending or other.endswith("." + ending)) for other in keys):
                shown[key] = ending
                break
    return shown


def fusion_name(results: RunResults) -> str | None:
    """A fused upstream's member names joined by '+' ("whisper_small+wavlm_base_plus"), or None for one
    upstream (results.json ``members``)."""
    names = [str(member.get("name", "?")) for member in results.members or []]
    return "+".join(names) if names else None


def describe_rows(
    records: Sequence[tuple[Path, RunResults]], ignore: frozenset[str] = frozenset()
) -> tuple[list[RowKey], list[str]]:
    """The row of every (run directory, results), and notes on what all runs share.

    A row is labelled by the settings that differ between the rows shown, never by what every row shares:

    - an override (or schedule) with the same value in every run is the same for the whole table, so it goes
      to the notes instead of every row label; one that differs labels the rows that have it;
    - an upstream override (``upstream.*``, a fusion member's ``upstream@upstream.members.<name>``) that all
      runs of the same upstream share is what the upstream column already says (the model, the members): it
      goes to the notes ("runs of <upstream>: ..."), and labels a row only where runs of one upstream differ
      in it;
    - a fused upstream is shown by its member names (``short_upstream``, "pretrained+random") unless two
      fused upstreams share them; a note gives its full name ("pretrained+random: fused upstream <label>");
    - long nested keys are written by their shortest unambiguous ending (``short_keys``).

    Overrides named in ``ignore`` never label a row.
    """
    overrides_by_run = [
        dict(pair for pair in map(parse_override, results.overrides) if _row_defining(pair[0], ignore))
        for _, results in records
    ]
    shared = _shared(overrides_by_run)
    schedules = {results.schedule for _, results in records}
    notes = [f"all runs: {key}={value}" for key, value in sorted(shared)]
    if len(schedules) == 1 and None not in schedules:
        notes.append(f"all runs: schedule {next(iter(schedules))}")
    protocols = {results.protocol for _, results in records}
    if records:
        notes.append(protocol_note(protocols))
    by_upstream: dict[str, list[dict[str, str]]] = defaultdict(list)
    for (_, results), overrides in zip(records, overrides_by_run, strict=True):
        by_upstream[results.upstream].append({k: v for k, v in overrides.items() if _upstream_key(k)})
    said_by_upstream = {upstream: _shared(group) - shared for upstream, group in by_upstream.items()}
    short_names = {results.upstream: fusion_name(results) or results.upstream for _, results in records}
    clashes = {name for name in short_names.values() if list(short_names.values()).count(name) > 1}
    shown = {upstream: upstream if short in clashes else short for upstream, short in short_names.items()}
    for upstream, name in sorted(shown.items()):
        if name != upstream:  # the full name, which the table and figures leave out
            notes.append(f"{name}: fused upstream {upstream}")
    for upstream, said in sorted(said_by_upstream.items()):
        if said:
            notes.append(
                f"runs of {shown[upstream]}: " + ", ".join(f"{key}={value}" for key, value in sorted(said))
            )
    differing = [
        {
            key: value
            for key, value in overrides.items()
            if (key, value) not in shared and (key, value) not in said_by_upstream[results.upstream]
        }
        for (_, results), overrides in zip(records, overrides_by_run, strict=True)
    ]
    shown_key = short_keys(key for overrides in differing for key in overrides)

    rows = []
    for (run_dir, results), overrides, own in zip(records, overrides_by_run, differing, strict=True):
        parts = [f"{shown_key[key]}={value}" for key, value in sorted(own.items())]
        if len(schedules) > 1 and results.schedule is not None:
            parts.append(f"schedule={results.schedule}")
        if results.protocol not in (None, SUPERB_PROTOCOL) or len(protocols) > 1:
            parts.append(f"protocol={results.protocol or 'unrecorded'}")
        interface = results.interface + (f" ({', '.join(parts)})" if parts else "")
        extra = head_extra_params(run_dir, results)
        if extra:
            interface += f" + larger head (+{extra:,})"
        fine_tuned = results.trainable_params.get("upstream", 0) > 0
        condition = ", ".join(c for c, on in (("fine-tuned", fine_tuned), ("larger head", bool(extra))) if on)
        rows.append(
            RowKey(
                upstream=results.upstream + (", fine-tuned" if fine_tuned else ""),
                interface=interface,
                interface_name=results.interface,
                model=paper_model(results.upstream),
                comparable=not (
                    results.schedule == "demo"
                    or results.protocol not in (None, SUPERB_PROTOCOL)
                    or _changes_model(overrides)
                ),
                condition=condition,
                short_upstream=shown[results.upstream] + (", fine-tuned" if fine_tuned else ""),
            )
        )
    return rows, notes


def protocol_note(protocols: set[str | None]) -> str:
    """The footer line naming the protocol of the table's runs (docs/protocols.md)."""
    named = sorted(p for p in protocols if p is not None)
    if protocols == {SUPERB_PROTOCOL}:
        return "protocol: superb (SUPERB's published pipeline; published numbers are of this protocol)"
    if not named:
        return "protocol: not recorded (results.json written before protocols); compared as superb"
    others = [p for p in named if p != SUPERB_PROTOCOL]
    listed = ", ".join(named) + (" and unrecorded" if None in protocols else "")
    return (
        f"protocols: {listed}; rows labelled protocol={'/'.join(others)} get no published number "
        "(published numbers are of protocol superb)"
    )


def data_policy_summary(results: RunResults) -> str | None:
    """What the pre-training data check changed or left out (results.json ``data_policy``), as
    'train: 2 too_short (padded); test: 1 oov all-OOV left out', or None when it changed nothing."""
    parts = []
    for split, record in (results.data_policy or {}).items():
        found = []
        for kind, entry in record.items():
            if not isinstance(entry, dict):
                continue
            count = entry.get("all_oov_left_out") if kind == "oov" else entry.get("count")
            if count:
                label = "all-OOV left out" if kind == "oov" else entry.get("policy", "")
                found.append(f"{count} {kind} ({label})")
        if found:
            parts.append(f"{split}: {', '.join(found)}")
    return "; ".join(parts) or None


def collect_runs(roots: Iterable[str | Path], chosen_lr: bool = False) -> Collection:
    """Every finished run under ``roots`` with its row, and the incomplete job directories.

    Runs that differ only in ``trainer.lr`` are a learning-rate search (``lr_choice.py``); the notes name
    each search's dev-chosen learning rate. ``chosen_lr=True`` keeps only the chosen learning rate's runs,
    one row per search (its cells show the learning rate)."""
    roots = [Path(root) for root in roots]
    if not roots:
        raise ValueError("collect_runs needs at least one sweep directory")
    scan = scan_runs(roots)
    resolved_roots = sorted((root.resolve() for root in roots), key=lambda path: -len(path.parts))
    records = [(record.run_dir, record.results) for record in scan.complete]
    search_rows, search_notes = describe_rows(records, ignore=LR_KEYS)
    choices, chosen = choose_learning_rates(records, search_rows)
    lr_notes = choice_notes(choices, lambda row: row.label)
    if chosen_lr:
        records = [record for record, keep in zip(records, chosen, strict=True) if keep]
        rows = [row for row, keep in zip(search_rows, chosen, strict=True) if keep]
        notes = [*search_notes, *lr_notes, "only the runs of each search's dev-chosen learning rate"]
    else:
        rows, notes = describe_rows(records)
        notes.extend(lr_notes)
    runs = [
        Run(name=_run_name(run_dir, resolved_roots), run_dir=run_dir, results=results, row=row)
        for (run_dir, results), row in zip(records, rows, strict=True)
    ]
    replicates: dict[tuple, list[str]] = defaultdict(list)
    for run in runs:
        key = (run.row, run.results.task, run.results.seed, run.results.fold, ml_superb_settings(run))
        replicates[key].append(run.name)
    for (row, task, seed, fold, settings), names in replicates.items():
        if len(names) > 1:
            notes.append(
                f"{len(names)} runs of {row.short_label} / {task} with seed {seed}"
                + (f", fold {fold}" if fold is not None else "")
                + "".join(f", {key} {value}" for key, value in settings if value is not None)
                + f" are all averaged in: {', '.join(names)}"
            )
    for run in runs:
        summary = data_policy_summary(run.results)
        if summary:
            notes.append(f"data policies of {run.name}: {summary}")
    stopped = [
        f"{run.row.interface} ({run.row.shown_upstream}, {run.results.task}) at step {run.results.stopped_early['step']}"
        for run in runs
        if run.results.stopped_early
    ]
    if stopped:
        notes.append("stopped early by successive halving (trained fewer steps): " + "; ".join(stopped))
    selected = [
        run for run in runs if run.results.test_selected and run.results.metric in run.results.test_selected
    ]
    if selected:
        figures = ", ".join(
            f"{run.name} {run.results.test_selected[run.results.metric]:g} (step {run.results.test_selected.get('step')})"
            for run in selected
        )
        notes.append(
            "test scores are of the best dev checkpoint; SUPERB's published SV EERs are the best test score over "
            f"checkpoints instead (results.json test_selected, optimistic): {figures}"
        )
    return Collection(runs=runs, incomplete=scan.incomplete, notes=notes, chosen_lr=chosen_lr)


def row_sort_key(row: RowKey, interface_params: int) -> tuple:
    """Published models in the paper's order, then other upstreams by name; within an upstream, interfaces
    from the fewest trainable parameters to the most (last_layer, weighted_sum, ..., hconv)."""
    models = PUBLISHED.models
    model_rank = models.index(row.model) if row.model in models else len(models)
    return (model_rank, row.upstream, interface_params, row.interface)


def interface_params_by_row(runs: Iterable[Run]) -> dict[RowKey, int]:
    """The largest trainable interface parameter count among each row's runs (rows sort by it)."""
    counts: dict[RowKey, int] = defaultdict(int)
    for run in runs:
        counts[run.row] = max(counts[run.row], run.results.trainable_params.get("interface", 0))
    return counts
