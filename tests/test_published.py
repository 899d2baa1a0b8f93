"""Every published number the tables print equals its transcription: the interface paper's Table 2 and the
SUPERB rows of shared/DESIGN.md sections 3 and 4b, copied here verbatim as text and parsed independently of
downstream/reporting/published.yaml. Two swapped cells, a typo or a number under the wrong interface fail."""

from __future__ import annotations

import re

import pytest

from downstream.reporting.published import PUBLISHED
from tests.helpers import REPO_ROOT

# shared/DESIGN.md section 3, Table 2 (Mono-1h CER, Multi-1h CER, LID-1h acc, ER acc, IC acc, SV EER, PR PER).
TABLE2 = """
HuBERT Base   WS 35.1 24.4 84.6 64.92 98.34 5.11 5.41 | HConv 33.9 24.0 81.7 68.49 99.45 5.62 3.07 | CLS 33.9 24.3 1.2 62.73 99.45 49.91 2.93
HuBERT Large  WS 32.3 22.3 64.4 67.62 98.76 5.98 3.53 | HConv 30.0 21.4 89.2 72.44 99.53 6.03 1.76 | CLS 31.1 21.5 87.0 68.72 99.53 6.34 1.64
WavLM Base    WS 34.2 24.3 84.1 65.94 98.63 4.69 4.84 | HConv 32.4 23.6 67.9 68.57 99.53 5.48 3.06 | CLS 33.8 23.8 13.2 63.60 99.50 6.03 2.92
WavLM Large   WS 30.1 20.8 71.7 70.62 99.31 3.77 3.06 | HConv 28.0 19.4 90.6 74.95 99.71 5.20 1.72 | CLS 29.7 18.8 88.5 70.45 99.63 4.27 1.73
XLSR-53       WS 35.1 20.2 76.6 66.34 95.62 6.45 4.50 | HConv 30.6 19.8 80.4 72.01 99.55 5.63 2.69 | CLS 31.0 80.7 4.5 65.10 99.47 12.95 5.27
"""
TABLE2_TASKS = ("ml_mono", "ml_multi", "lid", "er", "ic", "sv", "pr")
INTERFACES = {"WS": "weighted_sum", "HConv": "hconv", "CLS": "cls_pooling"}

# shared/DESIGN.md section 3 (SUPERB paper, PR PER / ASR WER / SID acc / ER acc; FBANK's SID is printed as the
# fraction 0.00085, i.e. 0.085 percent) and section 4b (HuBERT Base's other SUPERB tasks; SD's DER is the best test
# DER over the post-processing grid, so it stands beside der_superb: column sd_superb).
SUPERB = {
    "FBANK": {"pr": 82.01, "asr": 23.18, "sid": 0.085, "er": 35.39},
    "wav2vec 2.0 Base": {"pr": 5.74, "asr": 6.43, "sid": 75.18, "er": 63.43},
    "HuBERT Base": {"ks": 96.30, "sf": 88.53, "sf_cer": 25.20, "sd_superb": 5.88},
}
SUPERB_QBE_HUBERT_BASE = 0.0736  # section 4b, best single layer


def table2_cells() -> list[tuple[str, str, str, float]]:
    cells = []
    for line in TABLE2.strip().splitlines():
        model = re.match(r"(.+?)\s{2,}", line).group(1)
        for part in line[len(model) :].split("|"):
            name, *values = part.split()
            assert len(values) == len(TABLE2_TASKS), line
            cells += [
                (model, INTERFACES[name], task, float(v))
                for task, v in zip(TABLE2_TASKS, values, strict=True)
            ]
    return cells


def test_the_transcription_here_is_design_mds():
    design = REPO_ROOT.parent / "shared" / "DESIGN.md"
    if not design.is_file():
        pytest.skip("shared/DESIGN.md is not beside this checkout")
    text = design.read_text()
    for line in [*TABLE2.strip().splitlines(), *TABLES_1_3_4.strip().splitlines()]:
        assert line in text, line


@pytest.mark.parametrize(("model", "interface", "task", "value"), table2_cells())
def test_every_table2_cell_is_published_under_its_model_interface_and_task(model, interface, task, value):
    reference = PUBLISHED.references[(model, interface, task)]
    assert reference.value == value and reference.source == "paper T2"


@pytest.mark.parametrize(
    ("model", "task", "value"),
    [(model, task, value) for model, row in SUPERB.items() for task, value in row.items()],
)
def test_superb_weighted_sum_rows(model, task, value):
    reference = PUBLISHED.references[(model, "weighted_sum", task)]
    assert reference.value == value and reference.source.startswith("SUPERB")


def test_superb_qbe_is_the_best_single_layer():
    reference = PUBLISHED.references[("HuBERT Base", "single_layer", "qbe")]
    assert reference.value == SUPERB_QBE_HUBERT_BASE


# shared/DESIGN.md section 3, Tables 1, 3 and 4 (lines verbatim).
TABLES_1_3_4 = """
weighted sum 42.85/35.15, grouped WS 2: 41.84/34.47, 3: 43.08/33.96, 4: 42.52/33.99, concat+proj 43.20/34.26,
PCA+concat 45.16/36.58, HConv 41.51/33.88, CLS 48.36/33.92.
Table 3, WS with a larger head (Mono/Multi CER): HuBERT Base 35.2/24.8, HuBERT Large 32.9/22.1, WavLM Base 34.4/24.3,
WavLM Large 30.5/20.8, XLSR-53 35.4/20.0. Table 4, end-to-end fine-tuning, HuBERT Base, Mono-1h: WS 35.1 -> 31.5,
HConv 33.9 -> 31.1, WS + larger head 35.2 -> 31.6.
"""
TABLE1_INTERFACES = {
    "weighted sum": "weighted_sum",
    "concat+proj": "concat_proj",
    "PCA+concat": "pca_concat",
    "HConv": "hconv",
    "CLS": "cls_pooling",
}


def test_tables_1_3_4_are_published_under_their_columns_and_conditions():
    text = " ".join(TABLES_1_3_4.split())
    table1, rest = text.split("Table 3")
    table3, table4 = rest.split("Table 4")
    found = 0
    for name, ten, hour in re.findall(
        r"(weighted sum|concat\+proj|PCA\+concat|HConv|CLS) (\d+\.\d+)/(\d+\.\d+)", table1
    ):
        interface = TABLE1_INTERFACES[name]
        assert PUBLISHED.references[("HuBERT Base", interface, "ml_mono_10min")].value == float(ten)
        one_hour = PUBLISHED.references[("HuBERT Base", interface, "ml_mono")]
        # Table 2's one-decimal number is listed first where it exists
        assert one_hour.value == (float(hour) if one_hour.source == "paper T1" else round(float(hour), 1))
        found += 1
    for model, mono, multi in re.findall(
        r"((?:HuBERT|WavLM) (?:Base|Large)|XLSR-53) (\d+\.\d+)/(\d+\.\d+)", table3
    ):
        for task, value in (("ml_mono", mono), ("ml_multi", multi)):
            assert PUBLISHED.conditioned[(model, "weighted_sum", task, "larger head")].value == float(value)
        found += 1
    rows = {"WS": ("weighted_sum", "fine-tuned"), "HConv": ("hconv", "fine-tuned")}
    rows["WS + larger head"] = ("weighted_sum", "fine-tuned, larger head")
    for name, _, tuned in re.findall(r"(WS \+ larger head|WS|HConv) (\d+\.\d+) -> (\d+\.\d+)", table4):
        interface, condition = rows[name]
        assert PUBLISHED.conditioned[("HuBERT Base", interface, "ml_mono", condition)].value == float(tuned)
        found += 1
    assert found == 5 + 5 + 3
