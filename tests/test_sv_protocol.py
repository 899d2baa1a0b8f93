"""SV under protocol=superb as s3prl 0.4.18's sv_voxceleb1 (configs/amsoftmax.yaml, dataset.py, expert.py,
test_expdir.sh), and what protocol=exact changes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile
from omegaconf import OmegaConf

from downstream.data.corpus import DataLayoutError
from downstream.tasks.sv import SpeakerVerification
from downstream.training.runner import run_experiment
from tests.helpers import (
    S3PRL_SV,
    TINY_UPSTREAM,
    read_curve,
    run_downstream_cli,
    sox_output,
    write_small_trials,
)

# s3prl's values, written from sv_voxceleb1/configs/amsoftmax.yaml (not from this project's configs):
# torch_optim_name AdamW (torch's default weight_decay 0.01), lr 1.0e-4, train_batch_size 10,
# gradient_accumulate_steps 5, gradient_clipping 1.0e+3, total_steps 200000.
S3PRL_SV_TRAINER = {
    "optimizer": "adamw",
    "weight_decay": 0.01,
    "lr": 1.0e-4,
    "batch_size": 10,
    "grad_accum": 5,
    "grad_clip": 1000.0,
    "max_steps": 200000,
    "test_every": 20000,  # test_expdir.sh tests states-20000 ... states-200000
}


def resolved(make_config, overrides: list[str]) -> dict:
    """The job's config as ``--cfg job --resolve`` prints it (without Hydra's own node)."""
    cfg = make_config(overrides)
    return {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("protocol", "trainer", "task")}


def test_sv_config_resolves_to_s3prl_values(make_config):
    cfg = resolved(make_config, ["task=sv", "task.data_root=/data/VoxCeleb1"])
    assert cfg["protocol"]["name"] == "superb"
    assert {key: cfg["trainer"][key] for key in S3PRL_SV_TRAINER} == S3PRL_SV_TRAINER
    task = cfg["task"]
    assert (task["gain_db"], task["vad"], task["hold_out_dev_speakers"], task["min_train_seconds"]) == (
        -3.0,
        True,
        False,
        2.0,
    )
    exact = resolved(make_config, ["task=sv", "task.data_root=/data/VoxCeleb1", "protocol=exact"])["task"]
    assert (exact["gain_db"], exact["vad"], exact["hold_out_dev_speakers"]) == (0.0, False, True)
    # the demo schedule keeps the mini corpus's ~1.5 s utterances
    assert resolved(make_config, ["task=sv"])["task"]["min_train_seconds"] == 1.0


@pytest.mark.slow
def test_sv_cfg_job_shows_superb_values():
    shown = run_downstream_cli(
        ["task=sv", "task.data_root=/data/VoxCeleb1", "--cfg", "job", "--resolve"]
    ).stdout
    for line in (
        "optimizer: adamw",
        "weight_decay: 0.01",
        "lr: 0.0001",
        "batch_size: 10",
        "grad_accum: 5",
        "grad_clip: 1000.0",
        "name: superb",
    ):
        assert f"  {line}\n" in shown, line


def write_corpus(root, lengths: dict[str, list[int]]) -> None:
    """<root>/wav/<speaker>/v/<n>.wav tones of the given lengths (samples, 16 kHz, 16-bit), and trial lists:
    dev over id10001 and id10002, test over id10003 and id10004."""
    rng = np.random.default_rng(0)
    for speaker, counts in lengths.items():
        for index, count in enumerate(counts):
            path = root / "wav" / speaker / "v" / f"{index:05d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            tone = 0.3 * np.sin(2 * np.pi * 200 * np.arange(count) / 16000) + 0.01 * rng.standard_normal(
                count
            )
            soundfile.write(str(path), tone, 16000, subtype="PCM_16")
    for name, (a, b) in (
        ("dev_trials.txt", ("id10001", "id10002")),
        ("veri_test.txt", ("id10003", "id10004")),
    ):
        (root / name).write_text(f"1 {a}/v/00000.wav {a}/v/00001.wav\n0 {a}/v/00000.wav {b}/v/00000.wav\n")


def test_sv_training_speakers_and_length_rule(tmp_path):
    lengths = {
        "id10001": [40000, 40000],  # dev trial speaker
        "id10002": [40000, 40000],  # dev trial speaker
        "id10003": [40000, 40000],  # test trial speaker
        "id10004": [40000, 40000],  # test trial speaker
        "id10005": [32000, 32001, 48000],  # exactly 2 s is left out, one sample more is kept
        "id10006": [20000],  # every utterance too short: still a class (s3prl: every speaker folder)
    }
    write_corpus(tmp_path, lengths)
    superb = SpeakerVerification(str(tmp_path), min_train_seconds=2.0, hold_out_dev_speakers=False)
    train = superb.utterances("train")
    assert sorted({u.label for u in train}) == ["id10001", "id10002", "id10005"]
    assert sorted(u.num_samples for u in train if u.label == "id10005") == [32001, 48000]
    assert superb.speakers() == ["id10001", "id10002", "id10005", "id10006"]
    assert superb.num_outputs == 4
    findings, left_out = superb.review_targets("train")
    assert findings["short_train"]["count"] == sum(
        n <= 32000 for s in ("id10001", "id10002", "id10005", "id10006") for n in lengths[s]
    )
    assert left_out == set()
    exact = SpeakerVerification(str(tmp_path), min_train_seconds=2.0, hold_out_dev_speakers=True)
    assert sorted({u.label for u in exact.utterances("train")}) == ["id10005"]


@pytest.mark.skipif(shutil.which("sox") is None, reason="needs the sox program (.ci/run installs it)")
def test_sv_length_rule_applies_after_the_vad(tmp_path):
    lengths = {speaker: [64000, 64000] for speaker in ("id10001", "id10002", "id10003", "id10004")}
    write_corpus(tmp_path, lengths)
    # 1.5 s of tone, 1 s of silence, 1 s of tone: 3.5 s as stored, about 2.5 s once sox cuts the silence out
    tone = 0.3 * np.sin(2 * np.pi * 200 * np.arange(16000) / 16000)
    gapped = tmp_path / "wav" / "id10005" / "v" / "00000.wav"
    gapped.parent.mkdir(parents=True)
    soundfile.write(
        str(gapped), np.concatenate([tone, tone[:8000], np.zeros(16000), tone]), 16000, subtype="PCM_16"
    )
    after_vad = len(sox_output(gapped, S3PRL_SV, tmp_path))  # s3prl's chain, by the sox program
    assert 32000 < after_vad < 56000
    for vad, kept in ((True, after_vad), (False, 56000)):
        for threshold, expected in (
            (after_vad / 16000 - 0.01, [kept]),
            (after_vad / 16000, [kept] if not vad else []),
        ):
            task = SpeakerVerification(
                str(tmp_path),
                min_train_seconds=threshold,
                vad=vad,
                gain_db=-3.0,
                vad_cache_dir=str(tmp_path / "cache"),
                hold_out_dev_speakers=False,
            )
            lengths_5 = [u.num_samples for u in task.utterances("train") if u.label == "id10005"]
            assert lengths_5 == expected, (vad, threshold)
            if vad:
                record = task.review_targets("test")[0]["vad"]
                assert record["seconds_after"] <= record["seconds_before"] and record["emptied"] == 0


def test_sv_missing_dev_list_names_s3prls_file(tmp_path):
    write_corpus(tmp_path, {s: [40000, 40000] for s in ("id10001", "id10002", "id10003", "id10004")})
    with pytest.raises(DataLayoutError, match="dev_meta_data/dev_meta_data.txt"):
        SpeakerVerification(str(tmp_path), dev_trials="missing.txt")


def test_sv_records_the_test_selected_figure(make_config, tmp_path, caplog):
    dev_list, test_list = write_small_trials(tmp_path)
    overrides = [
        "task=sv",
        f"task.dev_trials={dev_list}",
        f"task.test_trials={test_list}",
        "task.head.hidden_size=16",
        "task.head.stats_size=16",
        "trainer.max_steps=3",
        "trainer.eval_every=1",
        "trainer.test_every=1",
        "trainer.batch_size=4",
        "trainer.log_every=1",
        *TINY_UPSTREAM,
    ]
    run_dir = tmp_path / "run"
    with caplog.at_level("INFO"):
        results = run_experiment(make_config(overrides, run_dir=run_dir), run_dir, overrides=overrides)
    tested = [record for record in read_curve(run_dir) if record["split"] == "test_every"]
    assert [record["step"] for record in tested] == [1, 2, 3]
    best = min(tested, key=lambda record: record["eer"])  # first of equals: strict improvement
    assert results["test_selected"] == {"step": best["step"], "eer": best["eer"], "min_dcf": best["min_dcf"]}
    assert json.loads((run_dir / "results.json").read_text())["test_selected"] == results["test_selected"]
    assert results["protocol"] == "superb"
    # printed as the other results lines, with its unit; the final summary names it
    assert f"step {best['step']}/3 test: EER {best['eer']:.2f} %, minDCF {best['min_dcf']:.4f}" in caplog.text
    assert f"test_selected: EER {best['eer']:.2f} %" in caplog.text
