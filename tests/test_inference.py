"""Using a finished run (downstream.predict, downstream.extract, load_run): every task's predictions on the mini
corpus's test split, scored here from the written files, give the test metric the run recorded; extracted
features are the interface's output inside training, bitwise; bad runs, inputs and ids are refused or skipped."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import editdistance
import hydra.utils
import numpy as np
import pytest
import soundfile
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from downstream import load_run
from downstream.data.corpus import Utterance
from downstream.data.diarization import SpeakerTurn
from downstream.data.voxceleb1 import read_voxceleb1_sv
from downstream.extract import extract
from downstream.inference.run import RunLoadError
from downstream.metrics.diarization import DiarizationErrors, diarization_errors
from downstream.metrics.qbe import maximum_term_weighted_value
from downstream.metrics.slot_filling import slot_metrics, slot_statistics, tagged_transcript
from downstream.metrics.verification import equal_error_rate
from downstream.predict import predict
from downstream.tasks.asr import WORD_BOUNDARY
from downstream.tasks.ctc import normalised_characters
from downstream.training.checkpoint import (
    MODEL_FORMAT_VERSION,
    ModelFormatError,
    load_model_file,
    save_best_model,
    save_checkpoint,
)
from downstream.training.data_check import check_inputs
from downstream.training.runner import build_branch, build_task, resolve_trainer_settings, run_experiment
from downstream.training.trainer import Trainer
from tests.helpers import REPO_ROOT, TINY_UPSTREAM, compose_config, write_small_trials

SHORT_RUN = [
    "trainer.max_steps=3",
    "trainer.eval_every=3",
    "trainer.batch_size=4",
    "trainer.log_every=1",
    "trainer.lr=0.02",
]
#: per task: overrides that keep its run short (heads shrunk where they are large)
TASKS = {
    "pr": [],
    "asr": ["task.head.hidden_size=16", "task.head.lstm_size=16", "task.head.num_lstm_layers=1"],
    "sf": ["task.head.hidden_size=16", "task.head.lstm_size=16", "task.head.num_lstm_layers=1"],
    "ml_mono": ["task.head.hidden_size=16", "task.head.num_heads=2", "task.head.ff_size=32"],
    "ml_multi": ["task.head.hidden_size=16", "task.head.num_heads=2", "task.head.ff_size=32"],
    "sid": [],
    "er": [],
    "ks": [],
    "ic": [],
    "sv": ["task.head.hidden_size=16", "task.head.stats_size=16"],
    "sd": ["task.head.hidden_size=16"],
    "qbe": [],
}
FAST_TASKS = ("sid",)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """task -> (run folder, results) of a finished run of it on the mini corpus with the tiny upstream
    (trained on first use, once per module; tests that change a run copy it first)."""
    finished: dict[str, tuple[Path, dict]] = {}

    def get(task: str) -> tuple[Path, dict]:
        if task not in finished:
            folder = tmp_path_factory.mktemp(task)
            run_dir = folder / "run"
            (run_dir / ".hydra").mkdir(parents=True)
            overrides = [f"task={task}", *SHORT_RUN, *TINY_UPSTREAM, *TASKS[task]]
            if task == "sv":
                dev_list, test_list = write_small_trials(folder)
                overrides += [f"task.dev_trials={dev_list}", f"task.test_trials={test_list}"]
            cfg = compose_config(overrides, run_dir=run_dir)
            finished[task] = (run_dir, run_experiment(cfg, run_dir, overrides=overrides))
            GlobalHydra.instance().clear()
        return finished[task]

    return get


def evaluated_split(run_dir: Path, split: str = "test"):
    """The task of the run and the utterances its evaluation of ``split`` scored (after the data check)."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    task = build_task(cfg.task)
    upstream = hydra.utils.instantiate(cfg.upstream)
    if task.trains:
        check_inputs(task, upstream)
    return cfg, task, upstream, task.utterances(split)


def write_list(path: Path, utterances: list[Utterance]) -> Path:
    path.write_text("".join(f"{u.id} {u.path}\n" for u in utterances))
    return path


def read_jsonl(path: Path) -> dict[str, dict]:
    return {record["id"]: record for record in map(json.loads, path.read_text().splitlines())}


def rate(references: list[list], hypotheses: list[list]) -> float:
    edits = sum(editdistance.eval(r, h) for r, h in zip(references, hypotheses, strict=True))
    return 100.0 * edits / sum(len(r) for r in references)


def score(task, utterances: list[Utterance], run_dir: Path, tmp_path: Path) -> dict[str, float]:
    """Predict on ``utterances`` with the CLI's function and score the written output here."""
    run = load_run(run_dir, device="cpu")
    inputs = write_list(tmp_path / "inputs.txt", utterances)
    output = tmp_path / "predictions.jsonl"
    name = task.name
    if name == "qbe":
        qbe_set = task.qbe_set("test")
        predict(run, write_list(tmp_path / "docs.txt", qbe_set.documents), output,
                queries=write_list(tmp_path / "queries.txt", qbe_set.queries))  # fmt: skip
        records = read_jsonl(output)
        scores = np.array(
            [[records[q.id]["scores"][d.id] for d in qbe_set.documents] for q in qbe_set.queries]
        )
        targets = np.array(
            [[(q.id, d.id) in qbe_set.targets for d in qbe_set.documents] for q in qbe_set.queries]
        )
        return {"mtwv": maximum_term_weighted_value(scores, targets, **task.costs).mtwv}
    if name == "sd":
        predict(run, inputs, tmp_path / "out.rttm")
        hypotheses: dict[str, list[SpeakerTurn]] = {u.id: [] for u in utterances}
        for line in (tmp_path / "out.rttm").read_text().splitlines():
            fields = line.split()
            start, duration = float(fields[3]), float(fields[4])
            hypotheses[fields[1]].append(SpeakerTurn(fields[7], start, start + duration))
        total = DiarizationErrors()
        for u in utterances:
            total = total + diarization_errors(u.reference, hypotheses[u.id])
        return {"der": total.der}
    if name == "sv":
        inputs = write_list(tmp_path / "inputs.txt", raw_sv_test_files(task))
        trials = Path(task.trial_files["test"])
        predict(run, inputs, output, trials=trials, scores=tmp_path / "scores.txt")
        labels = [int(line.split()[0]) for line in trials.read_text().splitlines()]
        scores = [float(line.split()[2]) for line in (tmp_path / "scores.txt").read_text().splitlines()]
        return {"eer": equal_error_rate(np.array(scores), np.array(labels))}
    predict(run, inputs, output)
    records = read_jsonl(output)
    assert list(records) == [u.id for u in utterances]  # one object per input, in input order, with its path
    assert all(records[u.id]["path"] == str(u.path) for u in utterances)
    rows = [(u, records[u.id]) for u in utterances]
    if name in ("sid", "er", "ks"):
        for _, record in rows:
            assert sum(record["probabilities"].values()) == pytest.approx(1.0)
            assert record["label"] == max(record["probabilities"], key=record["probabilities"].get)
        return {"acc": 100.0 * np.mean([r["label"] == u.label for u, r in rows])}
    if name == "ic":
        return {"acc": 100.0 * np.mean([tuple(r["slots"].values()) == tuple(u.intent) for u, r in rows])}
    references = [task.decode(task.target(u, "test")) for u, _ in rows]
    if name == "pr":
        return {"per": rate(references, [r["hypothesis"].split() for _, r in rows])}
    if name == "asr":
        words = ["".join(ref).replace(WORD_BOUNDARY, " ").split() for ref in references]
        return {"wer": rate(words, [r["hypothesis"].split() for _, r in rows])}
    if name == "sf":
        statistics = slot_statistics(
            [tagged_transcript(ref) for ref in references], [r["hypothesis"] for _, r in rows]
        )
        return {"slot_type_f1": slot_metrics(statistics)["slot_type_f1"]}
    languages = [ref[0][1:-1] for ref in references] if name == "ml_multi" else None
    characters = [
        normalised_characters([t for t in ref if not t.startswith("[")], WORD_BOUNDARY) for ref in references
    ]
    metrics = {"cer": rate(characters, [list(r["hypothesis"]) for _, r in rows])}
    if languages is not None:
        metrics["lid_acc"] = 100.0 * np.mean(
            [r["language"] == lang for (_, r), lang in zip(rows, languages, strict=True)]
        )
    return metrics


@pytest.mark.parametrize(
    "task", [pytest.param(t, marks=[] if t in FAST_TASKS else [pytest.mark.slow]) for t in TASKS]
)
def test_predictions_scored_give_the_recorded_test_metric(runs, tmp_path, task):
    run_dir, results = runs(task)
    _, task_object, _, utterances = evaluated_split(run_dir)
    scored = score(task_object, utterances, run_dir, tmp_path)
    for metric, value in scored.items():
        recorded = results["test"][metric]
        tolerance = 1e-4 if task == "sd" else 1e-9  # RTTM prints microseconds
        assert value == pytest.approx(recorded, abs=tolerance), (metric, value, recorded)
    assert results["metric"] in scored


def inside_test_evaluation(run_dir: Path, scratch: Path):
    """The run's best model on its test split through the trainer's own evaluation loader: (upstream,
    layer weights, utterances, id -> interface features [T, D'], id -> head output [C])."""
    cfg, task, upstream, utterances = evaluated_split(run_dir)
    settings = resolve_trainer_settings(cfg)
    branch = build_branch(cfg, upstream, task, settings, scratch)
    trainer = Trainer(settings, upstream, task, [branch], seed=cfg.seed)
    branch.load_model_state(load_model_file(run_dir / "best.pt"))
    trainer._set_train_mode(False)
    features_of, logits_of = {}, {}
    with torch.no_grad():
        for batch in trainer.eval_loaders["test"]:
            hidden_states, frame_lengths = trainer.upstream_forward(batch, "test")
            with trainer._autocast():
                features = branch.interface(hidden_states, frame_lengths)
                logits = branch.head(features, frame_lengths)
            for row, index in enumerate(batch["indices"].tolist()):
                features_of[utterances[index].id] = features[row, : int(frame_lengths[row])]
                logits_of[utterances[index].id] = logits[row].float()
    return upstream, branch.interface.layer_weights(), utterances, features_of, logits_of


def test_extracted_features_and_predicted_probabilities_are_those_inside_training_bitwise(runs, tmp_path):
    run_dir, _ = runs("sid")
    upstream, layer_weights, utterances, inside_training, logits = inside_test_evaluation(
        run_dir, tmp_path / "scratch"
    )
    probabilities = {key: torch.softmax(value, dim=-1).tolist() for key, value in logits.items()}
    run = load_run(run_dir, device="cpu")
    manifest = extract(run.pipeline, write_list(tmp_path / "in.txt", utterances), tmp_path / "features",
                       hidden_states=[0])  # fmt: skip
    assert manifest["frame_rate"] == upstream.frame_rate and manifest["hidden_states"] == [0]
    assert manifest["layer_weights"] == pytest.approx(layer_weights.tolist())
    assert len(manifest["utterances"]) == len(utterances) == len(inside_training)
    for entry in manifest["utterances"]:
        exported = torch.from_numpy(np.load(tmp_path / "features" / entry["file"]))
        assert exported.shape[0] == entry["frames"]
        assert torch.equal(exported, inside_training[entry["id"]])
    # and the trained head's class probabilities, as predict writes them
    predict(run, tmp_path / "in.txt", tmp_path / "predictions.jsonl")
    for utterance_id, record in read_jsonl(tmp_path / "predictions.jsonl").items():
        assert list(record["probabilities"].values()) == probabilities[utterance_id]
    # the API gives one waveform's features
    one = utterances[0]
    wav, rate_ = soundfile.read(one.path, dtype="float32")
    assert run.features(wav, rate_).shape == inside_training[one.id].shape


def raw_sv_test_files(task) -> list[Utterance]:
    """The SV test split's files as the corpus has them (before sox's VAD), as a user gives them."""
    raw = read_voxceleb1_sv(
        task.data_root, "test", task.trial_files["test"], task.trial_files["dev"], task.hold_out_dev_speakers
    )
    assert task.vad and task.gain_db == -3.0  # protocol=superb: read with sox's VAD and a -3 dB gain
    return raw


@pytest.mark.slow
def test_sv_embeddings_of_the_corpus_files_are_those_of_the_test_evaluation_bitwise(runs, tmp_path):
    run_dir, _ = runs("sv")
    _, _, utterances, _, embeddings = inside_test_evaluation(run_dir, tmp_path / "scratch")
    _, task, _, _ = evaluated_split(run_dir)
    raw = raw_sv_test_files(task)
    assert [u.id for u in raw] == [u.id for u in utterances]
    assert all(
        r.path != u.path and r.num_samples > u.num_samples for r, u in zip(raw, utterances, strict=True)
    )
    run = load_run(run_dir, device="cpu")
    predict(run, write_list(tmp_path / "in.txt", raw), tmp_path / "predictions.jsonl")
    records = read_jsonl(tmp_path / "predictions.jsonl")
    assert [record["path"] for record in records.values()] == [str(u.path) for u in raw]
    for utterance_id, record in records.items():
        assert np.array_equal(
            np.array(record["embedding"], dtype=np.float32), embeddings[utterance_id].numpy()
        )
    # one waveform through the API is read the same way (a batch of one: equal up to float rounding)
    wav, rate_ = soundfile.read(raw[0].path, dtype="float32")
    np.testing.assert_allclose(run.predict(wav, rate_)["embedding"], embeddings[raw[0].id].numpy(), atol=1e-5)


@pytest.mark.slow
def test_sv_inputs_with_nan_samples_are_skipped_and_named_though_its_vad_output_is_finite(runs, tmp_path):
    run_dir, _ = runs("sv")
    _, task, _, _ = evaluated_split(run_dir)
    good = raw_sv_test_files(task)[0]
    samples = soundfile.read(str(good.path), dtype="float32")[0]
    samples[100] = np.nan
    flawed = tmp_path / "flawed.wav"
    soundfile.write(str(flawed), samples, 16000, subtype="FLOAT")
    listed = [good, Utterance("flawed", flawed, 0)]
    run = load_run(run_dir, device="cpu")
    report = predict(run, write_list(tmp_path / "in.txt", listed), tmp_path / "predictions.jsonl")
    assert report["skipped"] == 1 and report["skipped_files"][0]["path"] == str(flawed)
    assert "1 NaN or infinite sample(s)" in report["skipped_files"][0]["reason"]
    assert list(read_jsonl(tmp_path / "predictions.jsonl")) == [good.id]
    with pytest.raises(ValueError, match="the waveform holds 1 NaN or infinite sample"):
        run.predict(samples, 16000)


def test_load_run_refuses_mismatched_checkpoints_and_newer_formats(runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs("sid")[0], run_dir)
    state = load_model_file(run_dir / "best.pt")  # files are read and written through checkpoint.py only
    _, task, _, _ = evaluated_split(run_dir)
    assert state["format_version"] == MODEL_FORMAT_VERSION and state["outputs"] == task.labels()
    shutil.copy(run_dir / "best.pt", tmp_path / "good.pt")

    state["head"] = {**state["head"]}
    key = next(iter(state["head"]))
    state["head"][key] = torch.zeros(3, *state["head"][key].shape[1:])
    save_best_model(state, run_dir / "best.pt", state["step"])
    with pytest.raises(RunLoadError, match=f"head.{key} has shape"):
        load_run(run_dir, device="cpu")

    newer = load_model_file(tmp_path / "good.pt")
    newer["format_version"] = MODEL_FORMAT_VERSION + 1
    save_checkpoint(newer, run_dir / "best.pt")
    with pytest.raises(
        ModelFormatError, match=f"version {MODEL_FORMAT_VERSION + 1}.*0 to {MODEL_FORMAT_VERSION}"
    ):
        load_run(run_dir, device="cpu")

    shutil.copy(tmp_path / "good.pt", run_dir / "best.pt")
    config = run_dir / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("seed: 0", "seed: 5"))
    with pytest.raises(RunLoadError, match="seed"):
        load_run(run_dir, device="cpu")


def test_inputs_skipped_resampled_padded_and_ids_kept_inside_the_output(runs, tmp_path):
    run_dir, _ = runs("sid")
    run = load_run(run_dir, device="cpu")
    folder = tmp_path / "audio"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    soundfile.write(folder / "a.wav", 0.1 * rng.standard_normal(16000).astype(np.float32), 16000)
    soundfile.write(folder / "sub" / "b.wav", 0.1 * rng.standard_normal((8000, 2)).astype(np.float32), 8000)
    soundfile.write(folder / "short.wav", 0.1 * rng.standard_normal(50).astype(np.float32), 16000)
    (folder / "broken.wav").write_bytes(b"RIFF not audio")
    report = predict(run, folder, tmp_path / "out.jsonl")
    assert (report["total"], report["skipped"], report["resampled"], report["downmixed"], report["padded"]) == (
        4, 1, 1, 1, 1,
    )  # fmt: skip
    assert report["skipped_files"][0]["path"].endswith("broken.wav")
    records = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(records) == ["a", "short", "sub/b"]
    # the API on the same audio: the resampled stereo file predicts what the batch predicted
    wav, rate_ = soundfile.read(folder / "sub" / "b.wav", dtype="float32")
    api = run.predict(wav.T, rate_)
    assert api["label"] == records["sub/b"]["label"]

    escaping = tmp_path / "escaping.txt"
    escaping.write_text(f"../../outside {folder / 'a.wav'}\n")
    with pytest.raises(ValueError, match="outside"):
        extract(run.pipeline, escaping, tmp_path / "features")
    assert not (tmp_path / "outside.npy").exists()


@pytest.mark.slow
def test_command_lines_predict_and_extract_without_a_run(runs, tmp_path):
    run_dir, _ = runs("pr")
    audio = REPO_ROOT / "data" / "mini_superb" / "LibriSpeech" / "test-clean"
    env_python = [sys.executable, "-m"]
    done = subprocess.run(
        [*env_python, "downstream.predict", f"run_dir={run_dir}", f"inputs={audio}", f"output={tmp_path}/p.txt",
         "format=kaldi"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert len((tmp_path / "p.txt").read_text().splitlines()) == len(list(audio.rglob("*.flac")))
    done = subprocess.run(
        [*env_python, "downstream.extract", *TINY_UPSTREAM, "interface=weighted_sum", f"inputs={audio}",
         f"output={tmp_path}/f", "format=safetensors"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((tmp_path / "f" / "manifest.json").read_text())
    assert manifest["layer_weights"] == pytest.approx([1 / 3] * 3)  # an untrained weighted sum: equal weights
    from safetensors.numpy import load_file

    first = manifest["utterances"][0]
    assert load_file(tmp_path / "f" / first["file"])["features"].shape == (first["frames"], 32)
    done = subprocess.run(
        [*env_python, "downstream.predict", f"run_dir={tmp_path}/missing", f"inputs={audio}", "output=x"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 1 and "missing" in done.stderr and "Traceback" not in done.stderr
    assert math.isfinite(manifest["frame_rate"])


def one_hot_logits(sequence: list[int], size: int) -> torch.Tensor:
    """Logits [1, T, size] whose argmax at frame t is sequence[t]."""
    return torch.nn.functional.one_hot(torch.tensor([sequence]), size).float() * 5.0


def test_prediction_records_from_head_outputs():
    """Each task's record of known head outputs, against the values written out by hand."""
    from downstream.tasks.ic import IntentClassification
    from downstream.tasks.ml_superb import MultilingualSpeechRecognition
    from downstream.tasks.pr import PhonemeRecognition
    from downstream.tasks.sd import SpeakerDiarization
    from downstream.tasks.sf import SlotFilling

    mini = REPO_ROOT / "data" / "mini_superb"
    # CTC: greedy decoding (repeats merged, blanks dropped) named by the recorded outputs
    outputs = ["<blank>", "|", "A", "B", "[eng]", "[fra]"]
    ml = MultilingualSpeechRecognition(str(mini / "ML-SUPERB"))
    logits = one_hot_logits([4, 2, 2, 0, 2, 1, 1, 3, 5], len(outputs))
    assert ml.predictions(logits, torch.tensor([9]), [16000], outputs) == [
        {"hypothesis": "AA B", "language": "eng"}
    ]
    assert ml.predictions(logits, torch.tensor([3]), [16000], outputs) == [
        {"hypothesis": "A", "language": "eng"}
    ]
    pr = PhonemeRecognition(
        str(mini / "LibriSpeech"), lexicon=str(mini / "LibriSpeech" / "librispeech-lexicon.txt")
    )
    phones = ["<blank>", "HH", "AH0", "L", "OW1"]
    assert pr.predictions(one_hot_logits([1, 0, 2, 3, 3, 4], 5), torch.tensor([6]), [0], phones) == [
        {"hypothesis": "HH AH0 L OW1"}
    ]
    sf = SlotFilling(str(mini / "SNIPS"))
    tokens = ["<blank>", " ", "G", "O", "R", "M", "E", "B-city", "E-city"]
    sequence = [2, 3, 1, 7, 4, 3, 5, 6, 8]  # G O ' ' B-city R O M E E-city
    assert sf.predictions(one_hot_logits(sequence, len(tokens)), torch.tensor([9]), [0], tokens) == [
        {"hypothesis": "GO B-city ROME E-city", "text": "GO ROME", "slots": {"city": ["ROME"]}}
    ]
    # IC: one softmax per slot block
    ic = IntentClassification(str(mini / "FluentSpeechCommands"))
    names = ["action=activate", "action=bring", "object=lamp", "location=kitchen", "location=none"]
    (record,) = ic.predictions(torch.tensor([[0.0, 1.0, 3.0, 2.0, 0.0]]), torch.tensor([1]), [0], names)
    assert record["label"] == "bring/lamp/kitchen"
    assert record["probabilities"]["action"]["bring"] == pytest.approx(math.e / (1 + math.e))
    assert record["probabilities"]["object"] == {"lamp": 1.0}
    # SD: frames over the threshold become turns timed by samples / frames
    sd = SpeakerDiarization(str(mini / "Diarization"))
    activity = torch.tensor([[[5.0, -5.0], [5.0, 5.0], [-5.0, 5.0], [-5.0, -5.0]]])  # 4 frames of 1 s
    (turns,) = sd.predictions(activity, torch.tensor([4]), [64000], ["speaker1", "speaker2"])
    assert turns == {"turns": [["speaker1", 0.0, 2.0], ["speaker2", 1.0, 3.0]]}
