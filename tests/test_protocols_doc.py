"""docs/protocols.md: generated from the configs, checked for staleness, and its superb values checked against
s3prl's, written here from the s3prl 0.4.18 files (not from this project's configs)."""

from __future__ import annotations

import shutil

import pytest

from scripts import make_protocols_doc
from scripts.make_protocols_doc import ProtocolDocError, main, superb_settings
from tests.helpers import write_superb_run

_ADAM = {"trainer.optimizer": "adam", "trainer.weight_decay": 0.0, "trainer.grad_clip": 1.0}


def _runner(lr: float, batch: int, accum: int, steps: int, every: int) -> dict:
    return {
        "trainer.lr": lr,
        "trainer.batch_size": batch,
        "trainer.grad_accum": accum,
        "trainer.max_steps": steps,
        "trainer.eval_every": every,
    }


# s3prl/downstream/<task>/config*.yaml: optimizer (torch_optim_name, lr), runner (total_steps,
# gradient_clipping, gradient_accumulate_steps, eval_step), datarc batch size; torch's Adam has
# weight_decay 0, AdamW 0.01 (s3prl/optimizers.py get_TorchOptim passes none).
S3PRL = {
    # ctc/libriphone.yaml:2-16,50,59; ctc/text.py WordTextEncoder appends <eos>; CTCLoss(zero_infinity=True)
    "pr": {
        **_ADAM,
        **_runner(1.0e-2, 16, 2, 100000, 1000),
        "task.target_eos": True,
        "task.ctc_loss_mean": "all",
    },
    # asr/config.yaml:2-15,47: batches of 32, halved whenever the longest is over 2000 samples
    # (asr/dataset.py), which is every LibriSpeech batch: 16
    # asr/model.py: Dropout after every RNNLayer; specaug.py: randint(0, W) widths, starts over the padded length
    "asr": {
        **_ADAM,
        **_runner(1.0e-4, 16, 1, 200000, 2000),
        "task.target_eos": True,
        "task.ctc_loss_mean": "all",
        "task.dropout_after_last": True,
        "task.spec_augment_widths": "exclusive",
        "task.spec_augment_positions": "padded",
    },
    "ks": {  # speech_commands/config.yaml; dataset.py:22 gain, :61-65,80-84 the 6 noise files cropped per draw;
        # expert.py:64-75,91 dev through a class-balanced WeightedRandomSampler
        **_ADAM,
        **_runner(1.0e-4, 32, 1, 200000, 5000),
        "task.gain_db": -3.0,
        "task.silence": "random_crops",
        "task.dev_sampling": "balanced_resample",
    },
    "ic": {**_ADAM, **_runner(1.0e-4, 32, 1, 200000, 5000)},  # fluent_commands/config.yaml:2-29
    "sid": {**_ADAM, **_runner(1.0e-4, 8, 4, 200000, 5000)},  # voxceleb1/config.yaml:4-31
    "er": {**_ADAM, **_runner(1.0e-4, 4, 8, 30000, 1000)},  # emotion/config.yaml:2-31
    "sf": {  # ctc/snips.yaml:2-16,48,109; ctc/text.py CharacterTextSlotEncoder appends <eos>
        **_ADAM,
        **_runner(1.0e-4, 32, 1, 200000, 2000),
        "task.target_eos": True,
        "task.ctc_loss_mean": "all",
        "task.dropout_after_last": True,
        "task.spec_augment_widths": "exclusive",
        "task.spec_augment_positions": "padded",
    },
    # diarization/config.yaml:2-29; expert.py:346 keeps best-states-dev.ckpt on the dev frame accuracy
    "sd": {**_ADAM, **_runner(1.0e-4, 8, 4, 30000, 500), "task.select_metric": "frame_accuracy"},
    "sv": {  # sv_voxceleb1/configs/amsoftmax.yaml, dataset.py:22-27, expert.py:58, test_expdir.sh:23
        "trainer.optimizer": "adamw",
        "trainer.weight_decay": 0.01,
        "trainer.grad_clip": 1000.0,
        **_runner(1.0e-4, 10, 5, 200000, 10000),
        "trainer.test_every": 20000,
        "task.gain_db": -3.0,
        "task.vad": True,
        "task.hold_out_dev_speakers": False,
    },
    # quesst14_dtw/dataset.py:31; docs/superb.md:312-318 scores with QUESST's scorer on the full ground truth, -10
    "qbe": {"task.gain_db": -3.0, "task.mtwv_trials": "full_ground_truth"},
}


@pytest.mark.parametrize("task", sorted(S3PRL))
def test_superb_values_are_s3prls(task):
    settings = superb_settings(task)
    shown = {key: settings[key]["superb"] for key in S3PRL[task] if key in settings}
    assert shown == S3PRL[task]


def test_protocols_page_is_current():
    assert main(["--check"]) == 0, "docs/protocols.md is stale: run python scripts/make_protocols_doc.py"


def test_stale_page_is_detected(tmp_path, capsys):
    page = tmp_path / "protocols.md"
    assert main(["--output", str(page)]) == 0
    assert main(["--check", "--output", str(page)]) == 0
    page.write_text(page.read_text().replace("`-3.0`", "`-6.0`", 1))
    assert main(["--check", "--output", str(page)]) == 1
    assert "is stale" in capsys.readouterr().err


def test_protocol_key_without_source_or_value_is_refused(tmp_path, monkeypatch):
    shutil.copytree(make_protocols_doc.ROOT / "configs", tmp_path / "configs")
    monkeypatch.setattr(make_protocols_doc, "ROOT", tmp_path)
    sv = tmp_path / "configs" / "task" / "sv.yaml"
    text = sv.read_text()
    sv.write_text(text.replace('  vad: "s3prl', '  vad_elsewhere: "s3prl'))
    with pytest.raises(ProtocolDocError, match="sv.yaml: protocol_sources has no entry for 'vad'"):
        superb_settings("sv")
    sv.write_text(text.replace("exact: {gain_db: 0.0, vad: false,", "exact: {gain_db: 0.0,"))
    with pytest.raises(ProtocolDocError, match="sv.yaml: protocols.exact does not set 'vad'"):
        superb_settings("sv")


def table_of(*roots) -> str:
    from downstream import reporting

    return reporting.render(reporting.aggregate(reporting.collect_runs(roots)), "markdown")


def test_tables_show_published_numbers_only_beside_superb_runs(tmp_path):
    scores = {"per": 5.0}
    write_superb_run(tmp_path / "superb" / "a", "pr", "per", False, scores)
    alone = table_of(tmp_path / "superb")
    assert "5.41 (paper T2)" in alone  # HuBERT Base weighted sum, the paper's Table 2
    assert "- protocol: superb (SUPERB's published pipeline" in alone

    write_superb_run(tmp_path / "exact" / "a", "pr", "per", False, {"per": 4.0}, protocol="exact")
    only_exact = table_of(tmp_path / "exact")
    assert "5.41" not in only_exact and "weighted_sum (protocol=exact)" in only_exact
    assert "protocols: exact; rows labelled protocol=exact get no published number" in only_exact

    mixed = table_of(tmp_path / "superb", tmp_path / "exact")
    lines = {line.split("|")[2].strip(): line for line in mixed.splitlines() if "weighted_sum" in line}
    assert set(lines) == {"weighted_sum (protocol=exact)", "weighted_sum (protocol=superb)"}
    assert "5.41 (paper T2)" in lines["weighted_sum (protocol=superb)"]
    assert "5.41" not in lines["weighted_sum (protocol=exact)"]


def test_tables_name_svs_test_selected_figure(tmp_path):
    write_superb_run(
        tmp_path / "sv" / "a", "sv", "eer", False, {"eer": 6.0}, test_selected={"step": 40000, "eer": 5.5}
    )
    table = table_of(tmp_path / "sv")
    assert "5.11 (paper T2)" in table
    assert "SUPERB's published SV EERs are the best test score over checkpoints" in table
    assert "a 5.5 (step 40000)" in table
