"""Head-to-head on SUPERB PR: this project's runner vs s3prl 0.4.18's legacy runner (``run_downstream.py``).

    python scripts/bench/vs_s3prl.py --smoke                        # CPU plumbing check, tiny model, < 1 min
    python scripts/bench/vs_s3prl.py --model base --updates 200 --warmup-updates 20 --repeats 1 \\
        --output docs/vs_s3prl.md --json vs_s3prl.json              # on a GPU

One run, nothing downloaded:
1. a synthetic corpus in LibriSpeech layout (``<root>/LibriSpeech/{train-clean-100,dev-clean,test-clean}/
   <speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` + ``<speaker>-<chapter>.trans.txt``), a lexicon of
   made-up words over the 69 stress-marked ARPAbet phones, and s3prl's phone vocabulary. Durations follow
   ``sample_durations`` (train-clean-100's range and mean, see there); word counts follow the duration at a
   speaking rate drawn per utterance, so transcript length and audio length correlate as in real speech but
   not exactly (s3prl buckets by transcript length, this project by audio length);
2. one random-weight HuBERT (``--model``: tiny, base or large) written once in s3prl's converted
   ``hubert_local`` format; s3prl loads that file, and this project loads either the same file through its
   s3prl upstream (``--ours-upstream s3prl``) or the same weights imported into torchaudio's model and
   saved as a state dict for the torchaudio bundle (``--ours-upstream torchaudio``, default for base/large:
   the upstream this project recommends; its hidden states are checked against s3prl's before timing);
3. SUPERB's PR schedule in both (weighted sum of all hidden states, Linear(D, 256) + Linear(256, vocab) per
   frame, CTC, Adam lr 1e-2, batch 16, gradient accumulation 2, clipping 1; s3prl's libriphone.yaml values)
   for ``--updates`` optimizer updates, in separate processes, interleaved ``--repeats`` times:
   ``s3prl`` (its runner as shipped, fp32), ``ours`` (this runner's defaults, fp32 as SUPERB) and
   ``ours-fast`` (``upstream.precision=bf16 trainer.precision=bf16``: bf16 upstream weights, bf16
   autocast for interface and head; plus ``--fast-overrides``).

Measured inside each process with two hooks, identical for both runners: a global optimizer-step hook
(``torch.optim.optimizer.register_optimizer_step_post_hook``) timestamps updates, with a device
synchronisation only at update ``--warmup-updates`` and at the last update; a wrapper around the upstream's
call counts the audio it gets (real samples, and padded batch samples). Figures over the window
(warm-up, last]: updates/s, audio seconds per second (real audio; padded audio in its own column), peak
memory (CUDA ``max_memory_allocated``, or the process's peak RSS on a CPU), and time to the first update
(imports, model, data indexing). After the last update the process exits (``--finish-runs``: let both
runners finish, including their evaluation).

Workarounds that s3prl 0.4.18 needs with today's packages live in ``install_s3prl_workarounds`` and nowhere
in the product: its wheel lacks the libriphone recipe (``downstream/ctc/corpus/libriphone.py``, the recipe
yaml, vocabulary and lexicon files: written here, the dataset class re-implemented from s3prl's source with
the same bucketing), ``torchaudio.load`` needs TorchCodec (replaced by a soundfile reader),
``huggingface_hub`` no longer has ``HfFolder`` and ``Repository`` (stubs; s3prl's hub upload path is unused), ``tensorboardX`` may
be missing (a no-op writer when it is), and torchaudio >= 2.9 lacks ``set_audio_backend``/``sox_effects``
(upstream/_s3prl_compat.py). ``torch.load``'s weights-only default only breaks s3prl's resume path, which
this benchmark never takes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO_ROOT))
SAMPLE_RATE = 16000

from scripts.bench.meter import start_meter  # noqa: E402
from scripts.bench.s3prl_runner import child_s3prl  # noqa: E402
from scripts.bench.synthetic_librispeech import (  # noqa: E402
    MODELS,
    PR_ACCUM,
    PR_BATCH,
    PR_LR,
    make_corpus,
    write_s3prl_checkpoint,
    write_torchaudio_state,
)


# -- this project's runner --------------------------------------------------------------------------
def ours_overrides(spec: dict[str, Any]) -> list[str]:
    root = Path(spec["corpus"])
    if spec["ours_upstream"] == "s3prl":
        upstream = [
            "upstream=s3prl",
            "upstream.name=hubert_local",
            f"upstream.path={spec['s3prl_checkpoint']}",
        ]
    else:
        upstream = [
            "upstream=torchaudio",
            f"upstream.bundle={spec['bundle']}",
            f"upstream.path={spec['torchaudio_state']}",
        ]
    return [
        *upstream,
        "task=pr",
        "interface=weighted_sum",
        f"task.data_root={root / 'LibriSpeech'}",
        f"task.lexicon={root / 'lexicon.txt'}",
        "schedule=superb",
        f"trainer.max_steps={spec['updates']}",
        f"trainer.eval_every={spec['updates']}",
        f"trainer.num_workers={spec['num_workers']}",
        f"trainer.device={spec['device']}",
        "trainer.progress_bar=false",
        "logger=none",
        "overwrite=true",
        f"hydra.run.dir={Path(spec['workdir']) / 'ours_run'}",
        *spec["overrides"],
    ]


def child_ours(spec: dict[str, Any]) -> None:
    import torch

    torch.set_num_threads(spec["threads"]) if spec["threads"] else None
    meter = start_meter(spec)
    from upstream.base import Upstream

    forward = Upstream.forward

    def counted_forward(self: Any, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> Any:
        meter.count_audio(wav_lengths.sum(), wavs.shape[0] * wavs.shape[1])  # no host sync
        return forward(self, wavs, wav_lengths)

    Upstream.forward = counted_forward
    os.environ.setdefault("SSL_BENCH_ROOT", str(REPO_ROOT))
    sys.argv = [str(REPO_ROOT / "run_downstream.py"), *ours_overrides(spec)]
    runpy.run_path(
        sys.argv[0], run_name="__main__"
    )  # as `python run_downstream.py ...` (Hydra finds configs/)


# -- orchestration ------------------------------------------------------------------------------------
FAST = ["upstream.precision=bf16", "trainer.precision=bf16"]


def resolve_workers(requested: str, device: str) -> int:
    """``auto``: the project's trainer.num_workers=auto rule (0 on a CPU; all cores but two, at most 16, on
    a GPU), used for both runners so that they decode with the same number of processes."""
    if requested != "auto":
        return int(requested)
    return 0 if device == "cpu" else max(0, min(16, (os.cpu_count() or 1) - 2))


def run_child(runner: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one runner in its own process; its measured window as a dict, or {'error': ...}."""
    spec_file = Path(spec["workdir"]) / "spec.json"
    spec_file.write_text(json.dumps(spec))
    log = Path(spec["workdir"]) / "log.txt"
    command = [sys.executable, "-m", "scripts.bench.vs_s3prl", "--child", runner, str(spec_file)]
    path = os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
    )  # keeps carried wheels
    env = {**os.environ, "PYTHONPATH": path, "SSL_BENCH_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    if spec["threads"]:
        env["OMP_NUM_THREADS"] = str(spec["threads"])
    began = time.perf_counter()
    try:
        with log.open("w") as out:
            status = subprocess.run(
                command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
    except subprocess.TimeoutExpired:
        status = "timeout"
    wall = time.perf_counter() - began
    result_file = Path(spec["result"])
    if result_file.is_file():
        return {**json.loads(result_file.read_text()), "process_s": wall}
    tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
    return {"error": f"exit {status} after {wall:.0f} s without a measurement; log tail:\n{tail}"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true", help="tiny model, short corpus, 4 updates, CPU")
    parser.add_argument("--model", choices=sorted(MODELS), default="base", help="random-weight HuBERT size")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--updates", type=int, default=200, help="optimizer updates per run")
    parser.add_argument("--warmup-updates", type=int, default=20, help="updates before the timed window")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds of all runners")
    parser.add_argument(
        "--runners", default="s3prl,ours,ours-fast", help="comma-separated: s3prl, ours, ours-fast"
    )
    parser.add_argument("--ours-upstream", choices=["torchaudio", "s3prl"], default=None,
                        help="this project's upstream for the same weights (default: torchaudio; s3prl for tiny)")  # fmt: skip
    parser.add_argument(
        "--fast-overrides", default="", help="extra Hydra overrides for ours-fast (space-separated)"
    )
    parser.add_argument("--train-utterances", type=int, default=None,
                        help="default: enough for one epoch of this runner (updates x 32 + 10%%)")  # fmt: skip
    parser.add_argument(
        "--duration-scale", type=float, default=1.0, help="multiply every duration (smoke: 0.1)"
    )
    parser.add_argument("--num-workers", default="auto", help="DataLoader workers of both runners")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads in each run")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
    parser.add_argument(
        "--finish-runs", action="store_true", help="let each runner finish (evaluation included)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="corpus, checkpoints, runs (default: a temp dir)"
    )
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown here")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw figures here")


def apply_smoke(args: argparse.Namespace) -> None:
    args.model, args.device = "tiny", "cpu"
    args.updates, args.warmup_updates = 4, 1
    args.duration_scale = 0.1
    args.train_utterances = args.train_utterances or 96
    args.threads = args.threads or 1


def describe_machine(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(0)
    else:
        name = platform.processor() or platform.machine()
        for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{name}, {os.cpu_count()} CPUs (load average {load:.1f} at the start), torch {torch.__version__}"


def summarize(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, str]]:
    """One row per runner: medians over its repeats, and the ratio to s3prl's median."""
    rows = []
    medians: dict[str, dict[str, float]] = {}
    keys = [
        "updates_per_s",
        "audio_s_per_s",
        "audio_s_per_update",
        "padded_s_per_update",
        "peak_mib",
        "first_update_s",
    ]
    for runner, runs in results.items():
        good = [r for r in runs if "error" not in r]
        if not good:
            rows.append({"runner": runner, "updates/s": f"failed: {runs[0]['error'].splitlines()[0]}"})
            continue
        medians[runner] = {k: statistics.median(r[k] for r in good) for k in keys}
    base = medians.get("s3prl")
    for runner, m in medians.items():
        rows.append(
            {
                "runner": runner,
                "runs": str(len([r for r in results[runner] if "error" not in r])),
                "updates/s": f"{m['updates_per_s']:.3f}",
                "audio s/s": f"{m['audio_s_per_s']:.1f}",
                "audio s / update (padded)": f"{m['audio_s_per_update']:.1f} ({m['padded_s_per_update']:.1f})",
                "peak MiB": f"{m['peak_mib']:,.0f}",
                "first update s": f"{m['first_update_s']:.1f}",
                "updates/s vs s3prl": f"{m['updates_per_s'] / base['updates_per_s']:.2f}x" if base else "-",
                "audio s/s vs s3prl": f"{m['audio_s_per_s'] / base['audio_s_per_s']:.2f}x" if base else "-",
                "peak memory vs s3prl": f"{m['peak_mib'] / base['peak_mib']:.2f}" if base else "-",
                "updates/s vs s3prl, per round": per_round(results, runner),
            }
        )
    return rows


def per_round(results: dict[str, list[dict[str, Any]]], runner: str) -> str:
    """updates/s over the same round's s3prl run, round by round (pairs run back to back share the load)."""
    pairs = zip(results.get("s3prl", []), results[runner], strict=False)
    ratios = [
        f"{r['updates_per_s'] / b['updates_per_s']:.2f}"
        for b, r in pairs
        if "error" not in r and "error" not in b
    ]
    return ", ".join(ratios) or "-"


def markdown_table(rows: list[dict[str, str]]) -> str:
    header = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row.get(k, "") for k in header) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        apply_smoke(args)
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if not 0 < args.warmup_updates < args.updates:
        raise SystemExit(
            f"--warmup-updates must be in [1, --updates); got {args.warmup_updates}, {args.updates}"
        )
    runners = args.runners.split(",")
    unknown = set(runners) - {"s3prl", "ours", "ours-fast"}
    if unknown:
        raise SystemExit(f"--runners: unknown {sorted(unknown)}; choose among s3prl, ours, ours-fast")
    ours_upstream = args.ours_upstream or ("s3prl" if args.model == "tiny" else "torchaudio")
    if ours_upstream == "torchaudio" and MODELS[args.model]["bundle"] is None:
        raise SystemExit(
            f"--ours-upstream torchaudio needs a torchaudio bundle architecture; --model {args.model} has none"
        )
    workers = resolve_workers(args.num_workers, device)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vs_s3prl."))
    workdir.mkdir(parents=True, exist_ok=True)

    began = time.perf_counter()
    train = args.train_utterances or int(args.updates * PR_BATCH * PR_ACCUM * 1.1)
    counts = {"train-clean-100": train, "dev-clean": 8, "test-clean": 8}
    corpus = workdir / "corpus"
    marker = corpus / "stats.json"
    wanted = {"counts": counts, "scale": args.duration_scale}
    if marker.is_file() and json.loads(marker.read_text()).get("wanted") == wanted:
        stats = json.loads(marker.read_text())["stats"]
    else:
        stats = make_corpus(corpus, counts, args.duration_scale)
        marker.write_text(json.dumps({"wanted": wanted, "stats": stats}))
    corpus_s = time.perf_counter() - began
    s3prl_checkpoint = workdir / f"hubert_{args.model}_s3prl.pt"
    torchaudio_state = workdir / f"hubert_{args.model}_torchaudio.pt"
    if not s3prl_checkpoint.is_file():
        write_s3prl_checkpoint(args.model, s3prl_checkpoint)
    conversion_error = None
    if ours_upstream == "torchaudio":
        conversion_error = write_torchaudio_state(s3prl_checkpoint, torchaudio_state)
        if conversion_error > 1e-3:
            raise SystemExit(
                f"torchaudio import of the checkpoint differs from s3prl by {conversion_error:.2e}"
            )
    print(f"corpus {stats} in {corpus_s:.0f} s; checkpoint {s3prl_checkpoint}", flush=True)

    results: dict[str, list[dict[str, Any]]] = {runner: [] for runner in runners}
    for repeat in range(args.repeats):
        for runner in runners:
            rundir = workdir / f"{runner}.{repeat}"
            rundir.mkdir(exist_ok=True)
            overrides = FAST + args.fast_overrides.split() if runner == "ours-fast" else []
            spec = {
                "corpus": str(corpus), "s3prl_checkpoint": str(s3prl_checkpoint), "device": device,
                "torchaudio_state": str(torchaudio_state), "bundle": MODELS[args.model]["bundle"],
                "ours_upstream": ours_upstream, "updates": args.updates, "warmup": args.warmup_updates,
                "num_workers": workers, "threads": args.threads, "finish": args.finish_runs,
                "workdir": str(rundir), "result": str(rundir / "result.json"), "overrides": overrides,
            }  # fmt: skip
            (rundir / "result.json").unlink(missing_ok=True)
            result = run_child("s3prl" if runner == "s3prl" else "ours", spec, args.timeout)
            results[runner].append(result)
            print(f"[{repeat}] {runner}: {json.dumps(result)[:400]}", flush=True)

    heading = (
        f"{datetime.date.today().isoformat()}, {describe_machine(device)}; HuBERT {args.model} (random weights; "
        f"ours via {ours_upstream}), SUPERB PR (batch {PR_BATCH} x accumulation {PR_ACCUM}, lr {PR_LR}), "
        f"updates {args.warmup_updates + 1}-{args.updates} timed, {args.repeats} interleaved round(s), "
        f"{workers} DataLoader workers each, torch threads {args.threads or 'default'}; synthetic train split "
        f"{stats['train-clean-100']}"
    )
    table = markdown_table(summarize(results))
    text = f"{heading}\n\n{table}\n"
    print(text)
    if args.output:
        args.output.write_text(text)
    report = {"heading": heading, "results": results, "corpus": stats, "conversion_max_abs": conversion_error}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child = {"s3prl": child_s3prl, "ours": child_ours}[sys.argv[2]]
        child(json.loads(Path(sys.argv[3]).read_text()))
    else:
        main()
