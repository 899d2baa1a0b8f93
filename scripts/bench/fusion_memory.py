"""Memory of a fused upstream (Whisper Small + WavLM Base+) per batch against each model alone (CPU).

    python scripts/benchmark.py fusion_memory --batch-size 2 --seconds 5 --threads 1

Each configuration runs in a fresh Python process (the high-water mark of a process cannot be reset):
the architectures are built from their published configurations with random weights (no download; Whisper
Small from ``upstream_forward.ARCHITECTURES``, WavLM Base+ from transformers' WavLMConfig defaults, the WavLM
Base architecture that Base+ shares), frozen, fp32, and one batch of ``--batch-size`` utterances (lengths
from ``--seconds``/2 to ``--seconds``) goes through the upstream once. Reported per configuration: the
weights (bytes of every parameter and buffer), the hidden states returned (bytes of the [L, B, T, D] float32
output), and the forward's peak: the process's high-water mark VmHWM after the forward minus its resident set
VmRSS just before it, with the mark reset just before the forward (``/proc/self/clear_refs`` = 5, Linux), i.e.
what the forward added on top of the loaded process at its highest point; the RSS at that peak is VmHWM.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
CONFIGS = {
    "whisper-small (trim)": [("whisper-small", "trim")],
    "whisper-small (pad30)": [("whisper-small", "pad30")],
    "wavlm-base-plus": [("wavlm-base-plus", None)],
    "whisper-small (trim) + wavlm-base-plus": [("whisper-small", "trim"), ("wavlm-base-plus", None)],
    "whisper-small (pad30) + wavlm-base-plus": [("whisper-small", "pad30"), ("wavlm-base-plus", None)],
}

CHILD = """
import json, sys, torch
sys.path.insert(0, {repo!r})
torch.set_num_threads({threads})
import transformers
from scripts.bench.upstream_forward import ARCHITECTURES, batch
from upstream.fusion import FusedUpstream
from upstream.hf import HfEncoderUpstream, model_from_config
ARCHITECTURES["wavlm-base-plus"] = ("WavLMConfig", {{}})
members = {{}}
for arch, window in {members!r}:
    config_class, values = ARCHITECTURES[arch]
    torch.manual_seed(0)
    model = model_from_config(getattr(transformers, config_class)(**values))
    extra = {{"whisper_window": window}} if window else {{"padding_mode": "exact"}}
    members[arch] = HfEncoderUpstream(model, name=arch, **extra)
upstream = next(iter(members.values())) if len(members) == 1 else FusedUpstream(members)
weights = sum(t.numel() * t.element_size() for t in upstream.state_dict().values())
wavs, lengths = batch({batch_size}, {seconds}, torch.device("cpu"))
def status(key):
    line = next(line for line in open("/proc/self/status") if line.startswith(key + ":"))
    return int(line.split()[1]) * 1024
open("/proc/self/clear_refs", "w").write("5")  # resets the high-water mark VmHWM to the current RSS
before = status("VmRSS")
states, frames = upstream(wavs, lengths)
peak = status("VmHWM")
print("RESULT" + json.dumps({{"weights": weights, "states": states.numel() * 4, "shape": list(states.shape),
      "forward_peak": peak - before, "process_peak": peak}}))
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=2, help="utterances per batch")
    parser.add_argument("--seconds", type=float, default=5.0, help="longest utterance; others down to half")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help="comma-separated, from the CONFIGS names"
    )


def measure(members: list, args: argparse.Namespace) -> dict:
    code = CHILD.format(
        repo=str(REPO),
        threads=args.threads,
        members=members,
        batch_size=args.batch_size,
        seconds=args.seconds,
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT")]
    if completed.returncode != 0 or not lines:
        raise SystemExit(f"measuring {members} failed:\n{completed.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT") :])


def run(args: argparse.Namespace) -> None:
    mib = 2**20
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"fused vs single upstream memory, {args.batch_size} utterances of {args.seconds / 2:g}-{args.seconds:g} s, "
        f"CPU, {args.threads} thread(s), fp32, random weights; {when}\n"
    )
    print(
        "| upstream | weights (MiB) | hidden states [L, B, T, D] | states (MiB) | forward peak (MiB) | RSS at that peak (MiB) |"
    )
    print("|---|---|---|---|---|---|")
    for name in args.configs.split(","):
        result = measure(CONFIGS[name], args)
        shape = " x ".join(map(str, result["shape"]))
        print(
            f"| {name} | {result['weights'] / mib:,.0f} | {shape} | {result['states'] / mib:,.1f} | "
            f"{result['forward_peak'] / mib:,.0f} | {result['process_peak'] / mib:,.0f} |",
            flush=True,
        )
