"""Run a finished run on new audio: ``python -m downstream.predict run_dir=<run> inputs=<audio> output=<file>``.

Keys: ``run_dir`` (a finished run folder), ``inputs`` (a folder of audio, a list file of ``path`` or ``id path``
lines, or a ``.jsonl`` manifest), ``output`` (a file; for ``format=rttm`` a ``.rttm`` file or a folder),
``format`` (auto | jsonl | kaldi | rttm; auto: rttm for sd, jsonl otherwise), ``device`` (auto | cpu | cuda),
``trials`` and ``scores`` (sv: a trial list to score, and where; default ``<output>.scores.txt``),
``queries`` (qbe: the queries, searched in ``inputs``, the documents), ``debug``. docs/using-a-trained-run.md
describes each task's output.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from downstream.data.corpus import Utterance
from downstream.inference import outputs as writers
from downstream.inference.cli import main_wrapper, parse_arguments
from downstream.inference.inputs import InputReport, check_inputs, list_inputs
from downstream.inference.run import TrainedRun, load_run

log = logging.getLogger("downstream.predict")

KEYS = ("run_dir", "inputs", "output", "format", "device", "trials", "scores", "queries")


def checked_inputs(run: TrainedRun, source: str | Path, report: InputReport) -> list[Utterance]:
    """The inputs of ``source`` that the run's upstream can take (``inputs.check_inputs``)."""
    upstream = run.pipeline.upstream
    return check_inputs(list_inputs(source), int(upstream.min_samples), upstream.max_samples, report)


def predict(
    run: TrainedRun,
    inputs: str | Path,
    output: str | Path,
    format: str = "auto",
    trials: str | Path | None = None,
    scores: str | Path | None = None,
    queries: str | Path | None = None,
) -> dict[str, Any]:
    """Predict on every input and write ``output``; returns the input report (``InputReport.to_dict``)
    with ``outputs``, the files written."""
    if format not in writers.FORMATS:
        raise ValueError(f"format={format!r}; expected one of {', '.join(writers.FORMATS)}")
    output = Path(output)
    report = InputReport()
    task_name = run.task.name
    if trials is not None and task_name != "sv":
        raise ValueError(f"trials=... scores speaker verification; this run is task {task_name}")
    if not run.task.trains:  # QbE: queries searched in the documents
        if queries is None:
            raise ValueError("task qbe: give queries=<audio> to search for in inputs=<documents>")
        from downstream.inference.qbe import search

        query_list = checked_inputs(run, queries, report)
        documents = checked_inputs(run, inputs, report)
        rows = search(run.pipeline, run.task, query_list, documents, report)
    else:
        if queries is not None:
            raise ValueError(f"queries=... is for qbe; this run is task {task_name}")
        utterances = checked_inputs(run, inputs, report)
        order = {utterance.id: index for index, utterance in enumerate(utterances)}
        rows = sorted(run.predict_files(utterances, report), key=lambda row: order[row[0].id])
    written = [output]
    chosen = "rttm" if format == "auto" and task_name == "sd" else ("jsonl" if format == "auto" else format)
    if chosen == "rttm":
        written = writers.write_rttm(output, rows)
    elif chosen == "kaldi":
        writers.write_kaldi_text(output, rows)
    else:
        writers.write_jsonl(output, rows)
    if trials is not None:
        embeddings = {utterance.id: record["embedding"] for utterance, record in rows}
        scored, left_out = writers.trial_scores(embeddings, writers.read_trial_list(Path(trials)))
        scores_path = Path(scores) if scores is not None else output.with_name(output.name + ".scores.txt")
        writers.write_trial_scores(scores_path, scored)
        written.append(scores_path)
        if left_out:
            log.warning("%d trial(s) name an input that was not given or was skipped; left out", left_out)
    summary = report.to_dict()
    log.info("%s; wrote %s", report.summary(), ", ".join(str(path) for path in written[:3]))
    return {**summary, "outputs": [str(path) for path in written]}


def main(argv: list[str]) -> None:
    values, _ = parse_arguments(argv, KEYS, ("run_dir", "inputs", "output"), "downstream.predict")
    run = load_run(values["run_dir"], device=str(values.get("device", "auto")))
    predict(
        run,
        values["inputs"],
        values["output"],
        format=str(values.get("format", "auto")),
        trials=values.get("trials"),
        scores=values.get("scores"),
        queries=values.get("queries"),
    )


if __name__ == "__main__":
    main_wrapper(main)
