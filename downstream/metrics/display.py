"""How a metric is written for a person: its name, unit and the decimals it is reported with.

Error rates, accuracies and F1 are stored in percent (``edit.error_rate``, ``classification.accuracy``, ...)
and printed with two decimals, as SUPERB's tables do (Yang et al., arXiv 2105.01051, Table 2); minDCF and
MTWV are fractions printed with four (the QbE scoring tool and SUPERB's SV table print MTWV and minDCF so).
results.json keeps every value at full precision; only the log line is rounded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricFormat:
    """A metric's printed name, unit (``%`` or empty) and decimals."""

    name: str
    unit: str
    decimals: int

    def format(self, value: float) -> str:
        """``PER 37.76 %``."""
        text = f"{self.name} {value:.{self.decimals}f}"
        return f"{text} {self.unit}" if self.unit else text


#: Every task metric's convention (the keys of the tasks' metric dicts that a results line shows).
METRIC_FORMATS: dict[str, MetricFormat] = {
    "per": MetricFormat("PER", "%", 2),
    "wer": MetricFormat("WER", "%", 2),
    "cer": MetricFormat("CER", "%", 2),
    "acc": MetricFormat("accuracy", "%", 2),
    "eer": MetricFormat("EER", "%", 2),
    "min_dcf": MetricFormat("minDCF", "", 4),
    "slot_type_f1": MetricFormat("slot-type F1", "%", 2),
    "slot_value_cer": MetricFormat("slot-value CER", "%", 2),
    "der": MetricFormat("DER", "%", 2),
    "mtwv": MetricFormat("MTWV", "", 4),
    "lid_acc": MetricFormat("LID accuracy", "%", 2),
}


def metric_format(key: str) -> MetricFormat:
    """The convention of metric ``key``; an unknown key is printed under its own name with four decimals."""
    return METRIC_FORMATS.get(key, MetricFormat(key, "", 4))


def results_line(split: str, metrics: Mapping[str, object], main: str) -> str:
    """One line for a split: the task's main metric first, then every other metric with a known convention
    (``METRIC_FORMATS``); counts and diagnostics (QbE's per-query statistics, ...) stay in results.json.
    ``test: PER 37.76 %``, ``test: slot-type F1 88.53 %, slot-value CER 25.20 %``."""
    keys = [main] + [key for key in METRIC_FORMATS if key != main and key in metrics]
    parts = [
        metric_format(key).format(float(metrics[key]))
        for key in keys
        if isinstance(metrics.get(key), int | float) and not isinstance(metrics.get(key), bool)
    ]
    return f"{split}: " + (", ".join(parts) if parts else "(no metric)")
