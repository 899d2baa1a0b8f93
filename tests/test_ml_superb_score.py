"""ML-SUPERB monolingual tables average as ESPnet's local/mono_superb_score.py does: the sets of one language
first (eng1-3, fra1-2, deu1-2), then the languages; a cell that lacks sets says which (results.json files
built here, the expected numbers computed in the test from ESPnet's own lists)."""

from __future__ import annotations

import numpy as np
import pytest

from downstream import reporting
from tests.helpers import ESPNET_MONOLINGUAL_SETS, write_superb_run

# ESPnet egs2/ml_superb/asr1/local/mono_superb_score.py: `langs`, one entry per set of `configs` (the
# order of ESPNET_MONOLINGUAL_SETS), written out as the script lists them.
ESPNET_LANGS = ("eng", "eng", "eng", "fra", "fra", "deu", "deu", "rus", "swa", "swe", "jpn", "cmn", "xty")


def espnet_average(scores: dict[str, float]) -> float:
    """mono_superb_score.py's number: the mean over languages of the mean of each language's sets."""
    by_language: dict[str, list[float]] = {}
    for name, language in zip(ESPNET_MONOLINGUAL_SETS, ESPNET_LANGS, strict=True):
        if name in scores:
            by_language.setdefault(language, []).append(scores[name])
    return sum(sum(v) / len(v) for v in by_language.values()) / len(by_language)


def write_sets(
    sweep, scores: dict[str, float], protocol: str = "superb", extra: tuple[str, ...] = ()
) -> None:
    for name, cer in scores.items():
        overrides = (f"task.language={name}", *extra)
        write_superb_run(
            sweep / f"{name}-{protocol}", "ml_mono", "cer", False, {"cer": cer}, overrides, protocol
        )


def only_cell(sweep):
    table = reporting.aggregate(reporting.collect_runs([sweep]))
    (cell,) = table.cells.values()
    return table, cell


@pytest.mark.parametrize("protocol", ["superb", "exact"])
def test_every_set_averages_per_language_first(tmp_path, protocol):
    scores = {name: 5.0 + 3.0 * index for index, name in enumerate(ESPNET_MONOLINGUAL_SETS)}
    write_sets(tmp_path, scores, protocol)
    table, cell = only_cell(tmp_path)
    expected = espnet_average(scores)
    assert expected != pytest.approx(np.mean(list(scores.values())))  # the rule matters for these scores
    assert cell.mean == pytest.approx(expected)
    language_means = [
        np.mean([scores[f"eng{i}"] for i in (1, 2, 3)]),
        np.mean([scores["fra1"], scores["fra2"]]),
    ]
    language_means += [np.mean([scores["deu1"], scores["deu2"]])]
    language_means += [scores[name] for name in ("rus", "swa", "swe", "jpn", "cmn", "xty")]
    assert cell.std == pytest.approx(np.std(language_means, ddof=1))
    assert cell.spread_over == "languages" and cell.coverage_note() is None
    assert "missing" not in reporting.render(table)


def test_a_missing_set_is_named_and_the_rest_still_averages_per_language(tmp_path):
    scores = {"eng1": 10.0, "eng2": 20.0, "eng3": 60.0, "fra1": 40.0, "deu1": 50.0}
    write_sets(tmp_path, scores)
    table, cell = only_cell(tmp_path)
    assert cell.mean == pytest.approx(((10.0 + 20.0 + 60.0) / 3 + 40.0 + 50.0) / 3)  # not the plain 36.0
    missing = "fra2 deu2 rus swa swe jpn cmn xty"
    assert cell.coverage_note() == f"5 of 13 sets, missing: {missing}"
    markdown = reporting.render(table, "markdown")
    assert f"(n=5, 5 of 13 sets, missing: {missing})" in markdown
    assert "5 of 13 sets" in reporting.render(table, "latex")
    assert "are all averaged in" not in markdown  # runs of different sets are no repeats of one another


def test_ten_minute_column_and_retired_names(tmp_path):
    scores = {"eng1": 10.0, "eng2": 30.0, "sat": 70.0}
    write_sets(tmp_path, scores, extra=("task.duration=10min",))
    _, cell = only_cell(tmp_path)
    assert cell.mean == pytest.approx((20.0 + 70.0) / 2)  # an unknown name counts as a language of its own
    assert cell.coverage_note().endswith("; not ESPnet sets: sat")
