#!/usr/bin/env bash
# Issue 12's GPU runs, in one script: notebook 14, the benchmarks, notebook 15. Written for the lent GPU machine
# (no network, 10 min per command, 15 min of device time in all; see README "Performance"), runs anywhere.
#
#   bash benchmarks/gpu_run.sh [--smoke] STEP...      STEP: setup nb14 bench nb15 all (all = the four in order)
#
#   setup  install the carried wheels (.whl/*.whl -> /tmp/site) unless the packages are already importable,
#          unpack the carried data parts (.devdata/*/ -> $EVA_DATA_DIR), check torch, CUDA and the data
#   nb14   eva run --full notebooks/14_custom_resnet.ipynb          (timeout $T_NB14 s, default 330)
#   bench  time_to_94.py (ours vs airbench, 5 runs each), resnet_epoch.py, mnist_epoch.py   ($T_BENCH, 200)
#   nb15   eva run --full notebooks/15_fast_cifar10.ipynb            ($T_NB15, 420)
#
# Everything it brings back goes to $OUT (the device tool's folder; default build/gpu_out), at most 8 plain
# files: gpu_run.log (every step's output), the executed notebooks, ledger_new.jsonl (the ledger lines this
# call appended), benchmarks.txt. A step that fails or times out is logged and the next step still runs;
# `eva run --full` leaves a notebook untouched unless all its cells succeed.
# --smoke: the same commands in smoke mode on any machine (eva run --smoke, benchmarks with --smoke or tiny
# settings), to check the script itself; nothing it writes is a result.
set -u
cd "$(dirname "$0")/.."
SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
STEPS=("$@"); [ ${#STEPS[@]} -eq 0 ] && STEPS=(all)
[ "${STEPS[*]}" = "all" ] && STEPS=(setup nb14 bench nb15)
OUT=${OUT:-build/gpu_out}; mkdir -p "$OUT"
LOG="$OUT/gpu_run.log"
export PYTHONUNBUFFERED=1 EVA_PROGRESS=0 MPLBACKEND=Agg NO_ALBUMENTATIONS_UPDATE=1
export EVA_DATA_DIR=${EVA_DATA_DIR:-/root/eva-data}
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH} || export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
LEDGER=results/ledger.jsonl
LEDGER_LINES=$(wc -l < "$LEDGER" 2>/dev/null || echo 0)
MODE=--full; [ $SMOKE = 1 ] && MODE=--smoke

log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }
step() {  # step NAME SECONDS COMMAND...: run with a time limit, output to the log (and to the terminal)
  local name=$1 limit=$2; shift 2
  log "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  log "=== $name: exit $rc after $((SECONDS - t0)) s$([ "$rc" = 124 ] && echo ' (TIMED OUT)')"
  return 0
}
bring_back() {  # copy what the steps produced into $OUT (called after every step, so a later timeout loses nothing)
  tail -n +"$((LEDGER_LINES + 1))" "$LEDGER" > "$OUT/ledger_new.jsonl" 2>/dev/null || true
  if [ $SMOKE = 1 ]; then src=build/smoke; else src=notebooks; fi
  for nb in 14_custom_resnet 15_fast_cifar10; do
    [ -f "$src/$nb.ipynb" ] && [ "$src/$nb.ipynb" -nt "$LOG.start" ] && cp "$src/$nb.ipynb" "$OUT/" || true
  done
  for f in build/failed/*.ipynb; do [ -f "$f" ] && [ "$f" -nt "$LOG.start" ] && cp "$f" "$OUT/failed_$(basename "$f")"; done
  return 0
}
touch "$LOG.start"

for s in "${STEPS[@]}"; do
  case $s in
  setup)
    log "=== setup"
    if ! python3 -c "import papermill, ipykernel, albumentations, torch_lr_finder, torchsummary" 2>/dev/null; then
      if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
          .whl/*.whl 2>&1 | tail -3 | tee -a "$LOG"
        export PYTHONPATH=/tmp/site:$PYTHONPATH
      else
        log "setup: packages missing and no .whl/ folder (make it with: bash ../shared/tools/device_wheels.sh .whl)"
      fi
    fi
    for part in .devdata/*/; do  # parts made by ../shared/tools/device_data.py pack .devdata (never in --smoke)
      [ $SMOKE = 0 ] && [ -f "$part/device_data.py" ] && python3 "$part/device_data.py" unpack "$part" "$EVA_DATA_DIR" \
        | tee -a "$LOG"
    done
    python3 - <<'PY' 2>&1 | tee -a "$LOG"
import os, torch, importlib
print("torch", torch.__version__, "| cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for m in ("papermill", "ipykernel", "albumentations", "torch_lr_finder", "torchsummary", "pytorch_grad_cam", "airbench"):
    try:
        print(f"{m:<18} {getattr(importlib.import_module(m), '__version__', 'ok')}")
    except Exception as err:
        print(f"{m:<18} MISSING ({type(err).__name__})")
d = os.environ["EVA_DATA_DIR"]
for f in ("cifar10/cifar10.npz", "MNIST/raw/train-images-idx3-ubyte.gz"):
    print(f"{f:<40} {'present' if os.path.exists(os.path.join(d, f)) else 'MISSING'} in $EVA_DATA_DIR")
PY
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv \
      | tee -a "$LOG"
    ;;
  nb14)
    step nb14 "${T_NB14:-330}" python3 -m eva_utils.cli run $MODE notebooks/14_custom_resnet.ipynb
    bring_back ;;
  nb15)
    step nb15 "${T_NB15:-420}" python3 -m eva_utils.cli run $MODE notebooks/15_fast_cifar10.ipynb
    bring_back ;;
  bench)
    if [ $SMOKE = 1 ]; then
      step time_to_94 "${T_BENCH:-200}" python3 benchmarks/time_to_94.py --smoke --runs 1
      step resnet_epoch 120 python3 benchmarks/resnet_epoch.py --batches 1 --repeats 1 --warmup 0
      step mnist_epoch 120 python3 benchmarks/mnist_epoch.py --batches 2 --repeats 1
    else
      step time_to_94 "${T_BENCH:-200}" python3 benchmarks/time_to_94.py --runs 5 --airbench-runs 5
      step resnet_epoch 60 python3 benchmarks/resnet_epoch.py
      step mnist_epoch 60 python3 benchmarks/mnist_epoch.py
    fi
    # the three tables (the end of each step's output) in one file
    awk '/=== (time_to_94|resnet_epoch|mnist_epoch) \(/{keep=1} keep' "$LOG" | grep -v '^ours \|^airbench run' \
      > "$OUT/benchmarks.txt" || true
    bring_back ;;
  *) log "unknown step $s (use setup nb14 bench nb15 all)"; exit 2 ;;
  esac
done
rm -f "$LOG.start"
log "done; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
