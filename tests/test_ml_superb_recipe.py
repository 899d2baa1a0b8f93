"""ML-SUPERB as ESPnet's egs2/ml_superb/asr1 recipe runs it (#25): the monolingual sets, the few-shot
reservation, the normal/few-shot CER split, utterance MVN, conv2d2's valid frames, ESPnet's CTC loss and the
average of the n best checkpoints. Each expected value is ESPnet's list or an independent computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F

from downstream import reporting
from downstream.data.ml_superb import MONOLINGUAL_SETS, few_shot_selection, read_ml_superb
from downstream.encoder_front import Conv2dSubsampling2, conv2d2_lengths, utterance_mvn
from downstream.heads import TransformerCTCHead
from downstream.metrics.edit import edit_statistics
from downstream.tasks.ml_superb import MonolingualSpeechRecognition, MultilingualSpeechRecognition
from downstream.training.averaging import BestCheckpoints, average_states
from downstream.training.runner import run_experiment
from tests.helpers import ESPNET_MONOLINGUAL_SETS, read_curve, write_finished_run

# ESPnet egs2/ml_superb/asr1/local/single_lang_data_prep.py: LANG_TO_SELECTED_DATASET
ESPNET_DATASETS = {
    "eng1": "mls",
    "eng2": "nchlt",
    "eng3": "voxpopuli",
    "fra1": "voxforge",
    "fra2": "voxpopuli",
    "deu1": "swc",
    "deu2": "voxpopuli",
    "rus": "M-AILABS",
    "swa": "ALFFA",
    "swe": "NST",
    "jpn": "commonvoice",
    "cmn": "fleurs",
    "xty": "mexico-el",
}
# ESPnet local/data_prep.py and local/split_results.py: RESERVE_LANG
ESPNET_RESERVED = [
    "dan",
    "lit",
    "tur",
    "srp",
    "vie",
    "kaz",
    "zul",
    "tsn",
    "epo",
    "frr",
    "tok",
    "umb",
    "bos",
    "ful",
    "ceb",
    "luo",
    "kea",
    "sun",
    "tso",
    "tos",
]


def test_monolingual_sets_are_espnets_and_the_old_names_are_refused(tmp_path):
    assert tuple(MONOLINGUAL_SETS) == ESPNET_MONOLINGUAL_SETS
    assert {name: pair[0] for name, pair in MONOLINGUAL_SETS.items()} == ESPNET_DATASETS
    assert all(pair[1] == name[:3] for name, pair in MONOLINGUAL_SETS.items())  # lang = args.lang[:3]
    with pytest.raises(
        ValueError, match=r"'deu' no longer exists: .*deu1 \(swc/deu\) and deu2 \(voxpopuli/deu\)"
    ):
        MonolingualSpeechRecognition(str(tmp_path), language="deu")
    with pytest.raises(ValueError, match=r"'sat' no longer exists: .*eng1 eng2 eng3"):
        read_ml_superb(tmp_path, "train", monolingual="sat")


def test_the_few_shot_list_is_the_recipes():
    selection = few_shot_selection()
    assert sorted(selection) == sorted(ESPNET_RESERVED)
    assert all(len(ids) == 5 for ids in selection.values())
    # spot checks against data_prep.py's FEW_SHOT_SELECTED_DATA (first and last entries)
    assert "cv_lit_000026" in selection["lit"] and "mexico-el_tos_000563" in selection["tos"]
    assert all(
        utterance.split("_")[-2] == language for language, ids in selection.items() for utterance in ids
    )


def write_tree(
    root: Path, folders: dict[tuple[str, str], dict[str, list[str]]], seconds: float = 0.3
) -> Path:
    """<root>/<dataset>/<language>/ with the given utterance ids per split ('train' is the 1-hour set)."""
    files = {
        "train": "transcript_1h_train.txt",
        "dev": "transcript_10min_dev.txt",
        "test": "transcript_10min_test.txt",
    }
    rng = np.random.default_rng(0)
    for (dataset, language), splits in folders.items():
        folder = root / dataset / language
        (folder / "wav").mkdir(parents=True)
        for split, name in files.items():
            lines = []
            for utterance in splits.get(split, []):
                audio = 0.1 * rng.standard_normal(int(seconds * 16000)).astype(np.float32)
                soundfile.write(str(folder / "wav" / f"{utterance}.wav"), audio, 16000)
                lines.append(f"{utterance} X {language.upper()} ONE")
            (folder / name).write_text("\n".join(lines) + "\n")
    return root


def few_shot_tree(root: Path) -> Path:
    """Lithuanian (reserved) in two datasets, one selected and one unselected utterance in each; English
    (trained) with two utterances; every language in dev and test."""
    return write_tree(
        root,
        {
            ("fleurs", "lit"): {
                "train": ["fleurs_lit_000097", "fleurs_lit_000001"],
                "dev": ["fleurs_lit_000900"],
                "test": ["fleurs_lit_000901"],
            },
            ("mls", "lit"): {"train": ["mls_lit_000040", "mls_lit_000041"]},
            ("mls", "eng"): {
                "train": ["mls_eng_000001", "mls_eng_000002"],
                "dev": ["mls_eng_000900"],
                "test": ["mls_eng_000901"],
            },
        },
    )


def test_few_shot_reservation_keeps_exactly_the_recipes_utterances(tmp_path):
    task = MultilingualSpeechRecognition(str(few_shot_tree(tmp_path)))
    train = {u.id for u in task.utterances("train")}
    assert train == {"fleurs_lit_000097", "mls_lit_000040", "mls_eng_000001", "mls_eng_000002"}
    assert {u.id for u in task.utterances("dev")} == {"fleurs_lit_000900", "mls_eng_000900"}  # dev/test whole
    records, _ = task.review_targets("train")
    assert records["few_shot_reserved"]["count"] == 2
    assert records["few_shot_reserved"]["per_language"] == {"lit": 2}
    everything = MultilingualSpeechRecognition(str(tmp_path), few_shot=False)
    assert len(everything.utterances("train")) == 6


def one_hot_logits(hypotheses: list[list[int]], vocabulary: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose greedy CTC decoding is each hypothesis: every token followed by a blank frame."""
    frames = max(2 * len(h) for h in hypotheses) or 1
    logits = torch.full((len(hypotheses), frames, vocabulary), -10.0)
    logits[:, :, 0] = 10.0
    for row, hypothesis in enumerate(hypotheses):
        for index, token in enumerate(hypothesis):
            logits[row, 2 * index, 0] = -10.0
            logits[row, 2 * index, token] = 10.0
    return logits, torch.tensor([frames] * len(hypotheses))


def test_cer_and_lid_are_reported_for_normal_and_few_shot_languages_apart(tmp_path):
    task = MultilingualSpeechRecognition(str(few_shot_tree(tmp_path)))
    utterances = task.utterances("dev")
    targets = [task.target(u, "dev") for u in utterances]
    ids = {token: index for index, token in enumerate(task.vocabulary)}
    # the Lithuanian hypothesis gets the wrong language and drops a character; the English one is right
    hypotheses = []
    for utterance, target in zip(utterances, targets, strict=True):
        if utterance.label == "lit":
            hypotheses.append([ids["[eng]"], *target[1:-1]])
        else:
            hypotheses.append(list(target))
    logits, lengths = one_hot_logits(hypotheses, len(task.vocabulary))
    batch = {"targets": targets, "groups": [task.group(u) for u in utterances]}
    metrics = task.metrics(task.eval_statistics(logits, lengths, batch))
    lit = [i for i, u in enumerate(utterances) if u.label == "lit"]
    units = [task.error_units(task.decode(t)) for t in targets]
    guessed = [task.error_units(task.decode(h)) for h in hypotheses]
    edits, length = edit_statistics([units[i] for i in lit], [guessed[i] for i in lit])
    assert metrics["cer_few_shot"] == pytest.approx(100.0 * edits / length) and edits > 0
    assert metrics["cer_normal"] == 0.0
    assert metrics["lid_acc_few_shot"] == 0.0 and metrics["lid_acc_normal"] == 100.0
    assert metrics["lid_acc"] == 50.0
    assert metrics["loss"] > 0


def test_utterance_mvn_normalises_each_utterance_over_its_valid_frames():
    torch.manual_seed(0)
    features = 3.0 + 2.0 * torch.randn(3, 9, 4)
    lengths = torch.tensor([9, 5, 2])
    means_only = utterance_mvn(features, lengths)
    full = utterance_mvn(features, lengths, norm_vars=True)
    espnet = utterance_mvn(features, lengths, zero_padding=False)
    for row, length in enumerate(lengths.tolist()):
        valid = features[row, :length].double().numpy()
        centred = valid - valid.mean(axis=0)
        np.testing.assert_allclose(means_only[row, :length].numpy(), centred, atol=1e-5)
        np.testing.assert_allclose(full[row, :length].mean(0).numpy(), 0.0, atol=1e-5)
        np.testing.assert_allclose(full[row, :length].double().pow(2).mean(0).numpy(), 1.0, atol=1e-5)
        np.testing.assert_allclose(full[row, :length].numpy(), centred / valid.std(axis=0), atol=1e-4)
        assert torch.all(means_only[row, length:] == 0) and torch.all(full[row, length:] == 0)
        # ESPnet's UtteranceMVN leaves the padded frames at zero minus the mean
        np.testing.assert_allclose(
            espnet[row, length:].numpy(), np.broadcast_to(-valid.mean(0), (9 - length, 4)), atol=1e-5
        )


def test_conv2d2_valid_frames_follow_espnets_mask_and_the_exact_rule():
    frames = 23
    lengths = torch.arange(1, frames + 1)
    mask = torch.arange(frames)[None, None, :] < lengths[:, None, None]  # [B, 1, T] as ESPnet's x_mask
    espnet = mask[:, :, :-2:2][:, :, :-2:1].sum(dim=(1, 2))  # Conv2dSubsampling2.forward's slicing
    assert torch.equal(conv2d2_lengths(lengths, frames, "espnet"), espnet)
    layer = Conv2dSubsampling2(80, 16).eval()
    torch.manual_seed(1)
    batch = torch.randn(2, frames, 80)
    lengths = torch.tensor([frames, 14])
    with torch.no_grad():
        together, together_lengths = layer(batch, lengths, "exact")
        alone, alone_lengths = layer(batch[1:, :14], lengths[1:], "exact")
    assert together.shape[1] == (frames - 1) // 2 - 2 == together_lengths[0]
    assert together_lengths[1] == alone_lengths[0] == alone.shape[1] == (14 - 1) // 2 - 2
    torch.testing.assert_close(together[1, : alone.shape[1]], alone[0])  # no output frame sees padding


def test_the_recipe_head_halves_the_frame_rate_and_does_not_depend_on_the_batch_under_the_exact_rule():
    torch.manual_seed(0)
    head = TransformerCTCHead(
        12, 7, hidden_size=16, num_heads=4, ff_size=32, input_layer="conv2d2", normalize="utterance_mvn"
    ).eval()
    features = torch.randn(2, 40, 12)
    lengths = torch.tensor([40, 25])
    with torch.no_grad():
        together = head(features, lengths)
        alone = head(features[1:, :25], lengths[1:])
    assert together.shape[1] == head.output_lengths(lengths, 40)[0] == 17
    valid = int(head.output_lengths(lengths, 40)[1])
    torch.testing.assert_close(together[1, :valid], alone[0, :valid], atol=1e-5, rtol=1e-5)


def test_espnets_ctc_loss_is_the_batch_mean_of_each_utterances_summed_loss(tmp_path):
    task = MultilingualSpeechRecognition(str(few_shot_tree(tmp_path)), ctc_loss="espnet")
    torch.manual_seed(0)
    utterances = task.utterances("train")[:3]
    targets = [task.target(u, "train") for u in utterances]
    logits = torch.randn(3, 30, len(task.vocabulary))
    lengths = torch.tensor([30, 28, 25])
    loss = task.loss(logits, lengths, {"targets": targets})
    flat = torch.tensor([t for target in targets for t in target])
    summed = F.ctc_loss(
        logits.log_softmax(-1).transpose(0, 1),
        flat,
        lengths,
        torch.tensor([len(t) for t in targets]),
        reduction="sum",
        zero_infinity=True,
    )
    torch.testing.assert_close(loss, summed / 3)


def test_the_average_of_five_checkpoints_is_their_mean(tmp_path):
    torch.manual_seed(0)
    keeper = BestCheckpoints(tmp_path / "nbest", 5)
    models = {}
    for step, loss in zip(range(1, 9), [9.0, 4.0, 7.0, 3.0, 8.0, 5.0, 2.0, 6.0], strict=True):
        models[step] = {
            "head": {"w": torch.randn(3, 2), "n": torch.tensor(step)},
            "interface": {"v": torch.randn(4)},
        }
        keeper.update(loss, step, lambda step=step: models[step])
    best_five = [7, 4, 2, 6, 8]  # losses 2, 3, 4, 5, 6
    assert keeper.steps() == best_five
    keeper.finish()
    assert sorted(p.name for p in (tmp_path / "nbest").iterdir()) == sorted(f"step{s}.pt" for s in best_five)
    averaged = keeper.average()
    expected = torch.stack([models[s]["head"]["w"] for s in best_five]).mean(0)
    torch.testing.assert_close(averaged["head"]["w"], expected)
    torch.testing.assert_close(
        averaged["interface"]["v"], torch.stack([models[s]["interface"]["v"] for s in best_five]).mean(0)
    )
    assert averaged["head"]["n"] == sum(best_five) // 5  # integer buffers: floor of the mean, as ESPnet
    with pytest.raises(ValueError, match="differ in their keys"):
        average_states([{"a": torch.zeros(1)}, {"b": torch.zeros(1)}])


def test_checkpoint_averaging_resumes_with_the_files_its_ranking_names(tmp_path):
    keeper = BestCheckpoints(tmp_path, 2)
    state = {"head": {"w": torch.zeros(1)}}
    keeper.update(5.0, 1, lambda: state)
    keeper.update(4.0, 2, lambda: state)
    saved = keeper.state()  # the checkpoint written after step 2's evaluation
    keeper.update(1.0, 3, lambda: state)  # the launch dies after this evaluation, before its checkpoint
    assert (tmp_path / "step1.pt").exists()  # an evicted file stays until the next evaluation
    resumed = BestCheckpoints(tmp_path, 2)
    resumed.load_state(saved)
    assert resumed.steps() == [2, 1] and not (tmp_path / "step3.pt").exists()  # the stray file is gone
    assert (tmp_path / "step1.pt").exists()


@pytest.mark.slow
def test_a_run_tests_the_average_of_its_best_checkpoints_and_resumes_to_the_same_result(
    make_config, tmp_path
):
    overrides = [
        "task=ml_mono",
        "trainer.max_steps=6",
        "trainer.eval_every=1",
        "task.average_best=3",
        "task.select_by=loss",
    ]
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    results = [run_experiment(make_config(overrides, run_dir=whole), whole, overrides=overrides)]
    stopped = [*overrides, "trainer.stop_after_steps=3"]
    assert run_experiment(make_config(stopped, run_dir=halves), halves, overrides=stopped) is None
    results.append(run_experiment(make_config(overrides, run_dir=halves), halves, overrides=overrides))
    assert results[0]["averaged_checkpoints"]["by"] == "loss"
    assert len(results[0]["averaged_checkpoints"]["steps"]) == 3
    assert results[0]["averaged_checkpoints"] == results[1]["averaged_checkpoints"]
    assert results[0]["test"] == pytest.approx(results[1]["test"])
    kept = sorted(p.name for p in (whole / "nbest").glob("step*.pt"))
    assert kept == sorted(f"step{s}.pt" for s in results[0]["averaged_checkpoints"]["steps"])
    dev_losses = {r["step"]: r["loss"] for r in read_curve(whole) if r["split"] == "dev"}
    assert (
        results[0]["averaged_checkpoints"]["steps"]
        == sorted(dev_losses, key=lambda s: (dev_losses[s], s))[:3]
    )
    # the reported model (average.pt, which load_run prefers to best.pt) is the mean of the kept files
    files = [torch.load(whole / "nbest" / name, weights_only=True) for name in kept]
    average = torch.load(whole / "average.pt", weights_only=True)
    for part in ("head", "interface"):
        for name, value in average[part].items():
            mean = torch.stack([state[part][name].double() for state in files]).mean(0).to(value.dtype)
            torch.testing.assert_close(value, mean)


def write_ml_run(run_dir: Path, interface: str, cer: float, **changes) -> None:
    """A finished ml_mono run of s3prl's HuBERT (one language set) with test CER ``cer``."""
    fields = {
        "task": "ml_mono",
        "metric": "cer",
        "higher_is_better": False,
        "interface": interface,
        "upstream": "hubert (s3prl)",
        "upstream_config": "s3prl",
        "seed": 0,
        "schedule": "superb",
        "protocol": "superb",
        "trainable_params": {"interface": 13, "head": 1000, "upstream": 0},
        "dev": {"cer": cer},
        "test": {"cer": cer},
    }
    fields.update(changes)
    config = fields.pop("config", None)
    write_finished_run(run_dir, config_yaml=config, **fields)


def test_tables_put_the_papers_conditions_beside_their_published_numbers(tmp_path):
    root = tmp_path / "sweep"
    languages = ("task.language=eng1",)
    write_ml_run(root / "ws_1h", "weighted_sum", 36.0, overrides=(*languages, "task.duration=1h"))
    write_ml_run(root / "ws_10min", "weighted_sum", 44.0, overrides=(*languages, "task.duration=10min"))
    write_ml_run(root / "pca_1h", "pca_concat", 37.0, overrides=(*languages, "task.duration=1h"))
    tuned = {"interface": 13, "head": 1000, "upstream": 94_000_000}
    write_ml_run(root / "hconv_tuned", "hconv", 31.0, trainable_params=tuned, overrides=languages)
    wide = "task:\n  head:\n    extra_params: 4424832\n"
    write_ml_run(root / "ws_wide", "weighted_sum", 35.0, config=wide, overrides=languages)
    write_ml_run(
        root / "ws_exact", "weighted_sum", 35.5, protocol="exact", overrides=(*languages, "protocol=exact")
    )
    table = reporting.aggregate(reporting.collect_runs([root]))
    references = {
        (
            row.interface_name,
            row.condition,
            "exact" if "protocol=exact" in row.interface else "superb",
            task,
        ): (cell.reference.value if cell.reference else None)
        for (row, task), cell in table.cells.items()
    }
    assert references[("weighted_sum", "", "superb", "ml_mono")] == 35.1  # Table 2 (listed before Table 1)
    assert references[("weighted_sum", "", "superb", "ml_mono_10min")] == 42.85  # Table 1's 10-minute column
    assert references[("pca_concat", "", "superb", "ml_mono")] == 36.58  # Table 1
    assert references[("hconv", "fine-tuned", "superb", "ml_mono")] == 31.1  # Table 4
    assert references[("weighted_sum", "larger head", "superb", "ml_mono")] == 35.2  # Table 3
    assert references[("weighted_sum", "", "exact", "ml_mono")] is None  # never beside protocol=exact
    assert [column.task for column in table.columns] == ["ml_mono_10min", "ml_mono"]


@pytest.mark.parametrize("task_name", ["ml_mono", "ml_multi"])
def test_only_the_demo_schedule_narrows_the_transformer_head(make_config, task_name):
    """ESPnet's encoder (train_asr_s3prl_{1h,10min}.yaml: output_size 256, linear_units 1024) under the superb
    schedule; the demo schedule on the mini corpus changes only the width (conv2d2 costs its square on a CPU)."""
    superb = make_config([f"task={task_name}", "schedule=superb"]).task.head
    demo = make_config([f"task={task_name}"]).task.head
    espnet = {"hidden_size": 256, "ff_size": 1024, "num_layers": 2, "bottleneck_size": 80}
    assert {key: superb[key] for key in espnet} == espnet
    assert demo.hidden_size == 128
    assert {key: demo[key] for key in demo if key != "hidden_size"} == {
        key: superb[key] for key in superb if key != "hidden_size"
    }
