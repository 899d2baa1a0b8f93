"""Smoke tests of the speed benchmarks (scripts/bench/vs_s3prl.py, scripts/bench/hubert_forward.py).

They check that the benchmarks run and measure what they say (updates, upstream calls, audio, errors);
never how fast anything is."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from scripts.bench import hubert_forward, s3prl_runner
from scripts.bench import synthetic_librispeech as corpus
from tests.helpers import REPO_ROOT


def test_synthetic_durations_match_train_clean_100():
    """100.6 h / 28,539 utterances = 12.7 s mean (LibriSpeech paper, Table 1), between 2 and 35 s."""
    durations = corpus.sample_durations(50_000, np.random.default_rng(0))
    assert durations.mean() == pytest.approx(100.6 * 3600 / 28_539, abs=0.15)
    assert durations.min() >= 2.0 and durations.max() <= 35.0
    assert 0.6 < np.mean((durations >= 11) & (durations <= 17.5)) < 0.9  # most utterances 11-17.5 s


def test_s3prl_phone_vocabulary_is_arpabet_with_stress():
    assert len(corpus.S3PRL_PHONE_VOCAB) == 71  # s3prl's downstream/ctc/vocab/phoneme.txt has 71 lines
    assert {"SIL", "SPN", "AA0", "AA1", "AA2", "ZH"} <= set(corpus.S3PRL_PHONE_VOCAB)


class _Tokenizer:
    def encode(self, text: str) -> list[str]:
        return text.split()


def test_libriphone_dataset_buckets_by_transcript_length(tmp_path):
    """s3prl's recipe: longest transcript first; training item i = bucket of consecutive utterances from
    min(i, len - bucket_size)."""
    (tmp_path / "lexicon.txt").write_text("A AH0\nBC B IY1 S IY1\n")
    chapter = tmp_path / "train" / "1" / "2"
    chapter.mkdir(parents=True)
    texts = {"1-2-0000": "A", "1-2-0001": "BC BC", "1-2-0002": "A BC", "1-2-0003": "BC BC BC"}
    (chapter / "1-2.trans.txt").write_text("".join(f"{k} {v}\n" for k, v in texts.items()))
    dataset = s3prl_runner.LibriPhoneDataset(
        ["train"], _Tokenizer(), 2, str(tmp_path), [str(tmp_path / "lexicon.txt")]
    )
    assert [path.stem for path in dataset.file_list] == ["1-2-0003", "1-2-0001", "1-2-0002", "1-2-0000"]
    assert len(dataset) == 4
    assert [path.stem for path, _ in dataset[3]] == ["1-2-0002", "1-2-0000"]  # clamped to len - bucket
    assert dataset[1][0][1] == ["B", "IY1", "S", "IY1"] * 2


def test_unmasked_attention_equals_the_masked_path_on_equal_lengths():
    """The no-mask prototype is only valid without padding; there it must match the product's path."""
    torch.manual_seed(0)
    upstream = hubert_forward.tiny_hubert("fp32")
    wavs, lengths = torch.randn(2, 8000), torch.tensor([8000, 8000])
    masked, _ = upstream(wavs, lengths)
    unmasked, _ = hubert_forward.build("tiny", "bf16+nomask", torch.device("cpu"))(wavs, lengths)
    reference_unmasked = hubert_forward.build("tiny", "fp32", torch.device("cpu"))
    reference_unmasked.transformer_states = hubert_forward.unmasked_transformer_states.__get__(
        reference_unmasked
    )
    torch.testing.assert_close(reference_unmasked(wavs, lengths)[0], masked, atol=1e-5, rtol=0)
    assert hubert_forward.layer_errors(masked, unmasked) < hubert_forward.TOLERANCE


@pytest.mark.slow
def test_s3prl_checkpoint_imports_into_torchaudio_with_the_same_hidden_states(tmp_path):
    corpus.write_s3prl_checkpoint("tiny", tmp_path / "tiny.pt")
    assert corpus.write_torchaudio_state(tmp_path / "tiny.pt", tmp_path / "tiny_ta.pt") < 1e-5
    assert set(torch.load(tmp_path / "tiny_ta.pt", weights_only=True)) >= {
        "encoder.transformer.layers.0.attention.k_proj.weight"
    }


@pytest.mark.slow
def test_vs_s3prl_smoke_measures_both_runners(tmp_path):
    """Both runners train SUPERB's PR schedule (2 upstream calls per update: accumulation 2) and the
    window counts the updates and the audio they consumed."""
    completed = subprocess.run(
        [
            sys.executable,
            "scripts/bench/vs_s3prl.py",
            "--smoke",
            "--workdir",
            str(tmp_path),
            "--json",
            str(tmp_path / "r.json"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    train = report["corpus"]["train-clean-100"]
    assert set(report["results"]) == {"s3prl", "ours", "ours-fast"}
    for runner, (run,) in report["results"].items():
        assert "error" not in run, (runner, run.get("error"))
        assert run["updates"] == 3 and run["upstream_calls"] == 2 * 3, runner
        # 32 utterances per update (s3prl halves batches only above 18.75 s, and smoke audio is 10x shorter)
        assert 32 * train["min_s"] <= run["audio_s_per_update"] <= 32 * train["max_s"], runner
        assert run["padded_s_per_update"] >= run["audio_s_per_update"]
    assert "| s3prl | 1 |" in completed.stdout


@pytest.mark.slow
def test_hubert_forward_smoke_reports_every_variant_within_tolerance(tmp_path):
    rows = hubert_forward.main(["--smoke", "--json", str(tmp_path / "f.json")])
    assert [row["variant"] for row in rows] == [
        "fp32",
        "bf16",
        "bf16+nomask",
        "bf16+compile-static",
        "bf16+nomask+compile",
    ]
    for row in rows:
        assert "error" not in row, row
        assert row["max_layer_rel_err"] < hubert_forward.TOLERANCE
    assert rows[0]["max_layer_rel_err"] == 0.0 and rows[1]["max_layer_rel_err"] > 0  # bf16 is not fp32
    assert rows[3]["varied_shapes"] >= 1 and "varied_x_real_time" not in rows[2]


@pytest.mark.parametrize(
    "module",
    sorted(path.stem for path in (REPO_ROOT / "scripts" / "bench").glob("*.py") if path.stem != "__init__"),
)
def test_every_benchmark_module_is_a_command_that_parses_its_defaults(module):
    """Each benchmark module is either a subcommand of scripts/benchmark.py (``add_arguments`` + ``run``)
    or a script of its own (``add_arguments`` + ``main``), or a part one of those imports; every command's
    parser takes its defaults (a broken import or argument breaks scripts/benchmark.py for all of them)."""
    from scripts import benchmark

    loaded = importlib.import_module(f"scripts.bench.{module}")
    if not hasattr(loaded, "add_arguments"):  # a part: imported by a command
        users = [
            path
            for path in (REPO_ROOT / "scripts" / "bench").glob("*.py")
            if f"scripts.bench.{module} " in path.read_text()
        ]
        assert users, f"scripts/bench/{module}.py is neither a command nor imported by one"
        return
    parser = argparse.ArgumentParser()
    loaded.add_arguments(parser)
    defaults = vars(parser.parse_args([]))
    assert defaults, f"{module} takes no arguments"
    if loaded in benchmark.SUBCOMMANDS.values():
        assert callable(loaded.run)
    else:
        assert callable(loaded.main), (
            f"{module} is not a subcommand of scripts/benchmark.py and has no main()"
        )
