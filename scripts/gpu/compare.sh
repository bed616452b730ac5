#!/usr/bin/env bash
# Same-machine comparison of several `kite` binaries on one engine, in one call: the GPU moves a
# figure by a few percent from one process (and one machine) to the next, so a change is judged
# against its baseline measured in turn, several times, on the same GPU and engine.
# Usage: bash scripts/gpu/compare.sh LOG_DIR [options] NAME=BINARY [NAME=BINARY...]
#   --static CASES    kite bench cases at batch 1 (default "2048,1;128,128"; "" for none)
#   --batch N         batch size of the static cases (default 1)
#   --serve CASES     serving cases, e.g. "2048,128;128,128" (kite bench --mode serve, max_utilization;
#                     the engine then has the serving limits of serve_bench.sh)
#   --requests N      requests per serving case (default 1024)
#   --reps R          rounds; each runs every binary once, in the order given (default 3)
#   --trace           then one traced run per binary of the first static case, or without static
#                     cases of the first serving case with at most 256 requests, and its timeline
#                     (needs .deps/trace from scripts/gpu/trace/build.sh), with the host's CUDA
#                     calls during the GPU's idle gaps; the timelines go to LOG_DIR, the raw
#                     traces (tens of MB) to /tmp/kite-compare/traces
#   --tests FILTER    first run build-gpu/tests/kite_cuda_tests with this gtest filter
#   --env NAME=K=V    run binary NAME with environment variable K=V (repeatable), e.g. for a switch
#   --tactics NAME=WHAT=CHOICE  run binary NAME on a copy of the engine with GEMM choices replaced
#                     (scripts/gpu/engine_tactics.py's --set: e.g. 4096x4096=gemv:0 for a shape,
#                     gemv:4=gemv:0 for a choice wherever the tuner made it; repeatable)
#   --build NAME=FLAGS  run binary NAME on an engine of its own, built from the same checkpoint with
#                     these extra `kite build` flags (space-separated, e.g. "--tune_decode")
# Binaries come from scripts/gpu/stage_prebuilt.sh (e.g. build-gpu/kite and build-gpu/kite-base).
# Every figure goes to LOG_DIR/compare.log with the machine, date and commit; a summary per binary
# and case (all runs, then the mean) ends it.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
log_dir="${1:?usage: compare.sh LOG_DIR [options] NAME=BINARY...}"
shift
static_cases="2048,1;128,128"
batch=1
serve_cases=""
requests=1024
reps=3
trace=0
tests=""
names=()
binaries=()
declare -A extra_env=()
declare -A tactics=()
declare -A build_flags=()
while (($#)); do
  case "$1" in
    --static) static_cases="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --serve) serve_cases="$2"; shift 2 ;;
    --requests) requests="$2"; shift 2 ;;
    --reps) reps="$2"; shift 2 ;;
    --trace) trace=1; shift ;;
    --tests) tests="$2"; shift 2 ;;
    --env)
      [[ "$2" == *=*=* ]] || { echo "compare.sh: --env wants NAME=VARIABLE=VALUE, got $2" >&2; exit 2; }
      extra_env["${2%%=*}"]+="${2#*=}"$'\n'
      shift 2 ;;
    --tactics)
      [[ "$2" == *=*=* ]] || { echo "compare.sh: --tactics wants NAME=WHAT=CHOICE, got $2" >&2; exit 2; }
      tactics["${2%%=*}"]+=" --set ${2#*=}"
      shift 2 ;;
    --build)
      [[ "$2" == *=* ]] || { echo "compare.sh: --build wants NAME=FLAGS, got $2" >&2; exit 2; }
      build_flags["${2%%=*}"]="${2#*=}"
      shift 2 ;;
    -*) echo "compare.sh: unknown option $1" >&2; exit 2 ;;
    *=*) names+=("${1%%=*}"); binaries+=("${1#*=}"); shift ;;
    *) echo "compare.sh: expected NAME=BINARY, got $1" >&2; exit 2 ;;
  esac
done
((${#names[@]})) || { echo "compare.sh: name at least one NAME=BINARY" >&2; exit 2; }
for name in "${!extra_env[@]}" "${!tactics[@]}" "${!build_flags[@]}"; do
  [[ " ${names[*]} " == *" $name "* ]] ||
    { echo "compare.sh: --env, --tactics or --build names no binary: $name" >&2; exit 2; }
  [[ -n "${tactics[$name]:-}" && -n "${build_flags[$name]:-}" ]] &&
    { echo "compare.sh: $name has both --tactics and --build; give it one" >&2; exit 2; }
done
if ((trace)) && [[ ! -f "$root/.deps/trace/libkite_trace.so" ]]; then
  echo "compare.sh: --trace needs .deps/trace (scripts/gpu/trace/build.sh)" >&2
  exit 2
fi
mkdir -p "$log_dir"
log_dir="$(cd "$log_dir" && pwd)"
cd "$root"
source scripts/gpu/env.sh
for binary in "${binaries[@]}"; do
  [[ -x "$binary" ]] || { echo "compare.sh: $binary is not an executable" >&2; exit 1; }
done
log="$log_dir/compare.log"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "commit: ${KITE_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  for i in "${!names[@]}"; do
    echo "binary ${names[$i]}: ${binaries[$i]} $(tr '\n' ' ' <<< "${extra_env[${names[$i]}]:-}")${tactics[${names[$i]}]:-}${build_flags[${names[$i]}]:+ build ${build_flags[${names[$i]}]}}"
  done
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader
} | tee "$log"

if [[ -n "$tests" ]]; then
  # The tests that run the command-line tool need the staged one (the tests look for build/kite).
  KITE_SOURCE_DIR="$root" KITE_BINARY="$root/build-gpu/kite" \
    build-gpu/tests/kite_cuda_tests --gtest_filter="$tests" > "$log_dir/tests.log" 2>&1 &&
    echo "tests ($tests): passed" | tee -a "$log" ||
    { echo "tests ($tests): FAILED (tests.log)" | tee -a "$log"
      { grep -E "FAILED|Failure" "$log_dir/tests.log" | head -20; } || true; }
fi

engine=/tmp/kite-compare/engine
limits=(--max_batch_size 64 --max_input_len 8192 --max_seq_len 8448 --max_num_tokens 8192)
if [[ -n "$serve_cases" ]]; then
  engine=/tmp/kite-compare/serve-engine
  limits=(--max_batch_size 1024 --max_input_len 2048 --max_seq_len 2304 --max_num_tokens 8192)
fi
# The checkpoint stays for the engines of --build (make_engine.sh converts only once).
export KITE_CHECKPOINT_DIR=/tmp/kite-compare/checkpoint
KITE_ENGINE_BINARY="${binaries[0]}" bash scripts/gpu/make_engine.sh "$engine" -- "${limits[@]}" \
  > "$log_dir/engine.log" 2>&1 || { echo "compare.sh: engine build failed (engine.log)" >&2; exit 1; }
# engine_of NAME: the engine NAME runs, with its --tactics applied to a copy, or built with its
# --build flags.
declare -A engines=()
for name in "${!build_flags[@]}"; do
  engines[$name]="$engine-$name"
  # shellcheck disable=SC2086  # the flags' words
  KITE_ENGINE_BINARY="${binaries[0]}" bash scripts/gpu/make_engine.sh "${engines[$name]}" -- \
    "${limits[@]}" ${build_flags[$name]} > "$log_dir/engine-$name.log" 2>&1 ||
    { echo "compare.sh: engine build for $name failed (engine-$name.log)" >&2; exit 1; }
  grep -E "^decode tuning|tokens/s against" "$log_dir/engine-$name.log" | tee -a "$log" || true
done
for name in "${!tactics[@]}"; do
  engines[$name]="$engine-$name"
  # shellcheck disable=SC2086  # the --set words
  python3 scripts/gpu/engine_tactics.py "$engine" "${engines[$name]}" ${tactics[$name]} \
    >> "$log_dir/engine.log" 2>&1 || { echo "compare.sh: --tactics for $name failed (engine.log)" >&2; exit 1; }
done
engine_of() { echo "${engines[$1]:-$engine}"; }
"${binaries[0]}" bench --engine_dir "$engine" --ceilings --batch_size 1 --input_output_len 128,2 \
  2>&1 | grep -E "CEILING" | tee -a "$log" || echo "ceilings: none printed" | tee -a "$log"

# The environment assignments of binary NAME, into the array env_args.
environment_of() {
  env_args=()
  [[ -n "${extra_env[$1]:-}" ]] && readarray -t env_args < <(printf '%s' "${extra_env[$1]}")
  return 0
}
# run NAME BINARY ARGS...: one bench process with NAME's environment, its [BENCHMARK] lines (and
# errors) tagged with NAME and run_suffix (set for the traced runs, which the summary leaves out);
# a failed run is logged and the comparison goes on.
run() {
  local name="$1" binary="$2" output rc=0
  local tag="$name${run_suffix:-}"
  shift 2
  environment_of "$name"
  output="$(env "${env_args[@]}" "$binary" "$@" 2>&1)" || rc=$?
  { grep -E "BENCHMARK|rror|check failed" <<< "$output" | sed "s/^/$tag /" | tee -a "$log"; } || true
  ((rc == 0)) || echo "$tag: run failed (exit $rc): $*" | tee -a "$log"
}
for ((rep = 1; rep <= reps; ++rep)); do
  for i in "${!names[@]}"; do
    if [[ -n "$static_cases" ]]; then
      run "${names[$i]}" "${binaries[$i]}" bench --engine_dir "$(engine_of "${names[$i]}")" \
        --batch_size "$batch" --input_output_len "$static_cases"
    fi
    IFS=';' read -ra cases <<< "$serve_cases"
    for case in "${cases[@]}"; do
      run "${names[$i]}" "${binaries[$i]}" bench --engine_dir "$(engine_of "${names[$i]}")" \
        --mode serve --scheduler_policy max_utilization --num_requests "$requests" --input_output_len "$case"
    done
  done
done

if ((trace)); then
  # The run to trace: the first static case (its two steps), else the first serving case with at
  # most 256 requests (the whole run as one window: where its time goes).
  if [[ -n "$static_cases" ]]; then
    traced=(--batch_size "$batch" --input_output_len "${static_cases%%;*}" --warm_up 1 --num_runs 1)
    timeline_args=()
  else
    traced=(--mode serve --scheduler_policy max_utilization --num_requests "$((requests < 256 ? requests : 256))"
            --input_output_len "${serve_cases%%;*}")
    timeline_args=(--split_us 1e9 --windows 1)
  fi
  traces=/tmp/kite-compare/traces
  mkdir -p "$traces"
  echo "traced: kite bench --engine_dir $engine ${traced[*]}; raw traces: $traces" >> "$log"
  for i in "${!names[@]}"; do
    run_suffix=" traced" run "${names[$i]}" env KITE_TRACE_FILE="$traces/trace_${names[$i]}.csv" \
      KITE_TRACE_API_FILE="$traces/api_${names[$i]}.csv" \
      LD_PRELOAD="$root/.deps/trace/libkite_trace.so" "${binaries[$i]}" bench \
      --engine_dir "$(engine_of "${names[$i]}")" \
      "${traced[@]}"
    python3 scripts/gpu/trace/timeline.py "$traces/trace_${names[$i]}.csv" "${timeline_args[@]}" \
      --api "$traces/api_${names[$i]}.csv" > "$log_dir/timeline_${names[$i]}.txt" 2>&1 || true
  done
fi

python3 - "$log" <<'EOF'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    match = re.match(r"(\S+) \[BENCHMARK\] (.*)", line)
    if not match:
        continue
    name, fields = match.groups()
    values = dict(re.findall(r"(\S+) (\S+)", fields))
    if values.get("mode") == "serve":
        case = f"serve {values['input_length']}/{values['output_length']}"
        figure = ("output tokens/s", float(values["tokensPerSec"]))
    elif int(values["output_length"]) == 1:
        case = f"batch {values['batch_size']} prefill {values['input_length']}"
        figure = ("first token ms", float(values["first_token_latency(ms)"]))
    else:
        case = f"batch {values['batch_size']} {values['input_length']}/{values['output_length']}"
        latency, first = float(values["latency(ms)"]), float(values["first_token_latency(ms)"])
        steps = int(values["output_length"]) - 1
        figure = ("decode tokens/s per sequence", steps * 1000.0 / (latency - first))
    runs.setdefault((case, figure[0]), {}).setdefault(name, []).append(figure[1])
print("\nsummary (each run, then the mean):")
for (case, unit), by_name in runs.items():
    print(f"{case} ({unit}):")
    for name, values in by_name.items():
        print(f"  {name:>12}: " + ", ".join(f"{v:.2f}" for v in values) +
              f"  mean {statistics.mean(values):.2f}")
EOF
