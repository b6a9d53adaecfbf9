# Sourced by the check/benchmark scripts (cpu_bench, gpu_bench, gpu_check, gpu_session): their common
# start (script_setup), named steps run under per-step caps and one overall deadline (step), and the
# closing summary of the benchmark scripts (finish_report).
#
# script_setup ARGS...: with no argument or -h/--help, print the script's header comment and exit 2; else RESULTS = the absolute path of $1 (created), the working folder
# becomes the repository root, PY = $PYTHON or python3, and this checkout goes first on PYTHONPATH.
#
# For step, the caller sets STEP_LOGS (folder for NAME.log and steps.jsonl) and STEP_DEADLINE (epoch seconds; steps
# get min(cap, time left - STEP_RESERVE)), and reads $status afterwards: 1 if any step failed, timed out
# or was skipped for lack of time. Steps never abort the script: the others still run. A step's command sees
# XGENMM_TEST_DEADLINE, after which the tests (tests/conftest.py) start no further test.

script_setup() {
  if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 2
  fi
  mkdir -p "$1" && RESULTS=$(cd "$1" && pwd) || exit 1
  cd "$(dirname "$0")/.." || exit 1
  PY=${PYTHON:-python3}
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
}

status=0
STEP_RESERVE=${STEP_RESERVE:-20}

step() {  # step NAME CAP_S CMD...
  local name=$1 cap=$2; shift 2
  local t0 left limit rc what
  t0=$(date +%s)
  left=$(( STEP_DEADLINE - STEP_RESERVE - t0 ))
  limit=$(( cap < left ? cap : left ))
  if (( limit < 10 )); then
    echo "{\"step\": \"$name\", \"rc\": null, \"skipped\": \"no time left before the deadline\"}" >>"$STEP_LOGS/steps.jsonl"
    echo "[$name] SKIPPED: no time left before the deadline"
    status=1
    return 0
  fi
  # pytest (tests/conftest.py) skips the tests that have not started XGENMM_TEST_DEADLINE, a margin before the
  # limit, and then ends with its summary and junit XML; past the limit SIGINT (Python scripts get a
  # KeyboardInterrupt traceback in their log), KILL 15 s later if need be
  XGENMM_TEST_DEADLINE=$(( t0 + limit - (limit / 5 < 25 ? limit / 5 : 25) )) \
    timeout --signal=INT --kill-after=15 "$limit" "$@" >"$STEP_LOGS/$name.log" 2>&1
  rc=$?
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 )), \"limit_s\": $limit}" \
    >>"$STEP_LOGS/steps.jsonl"
  what="rc=$rc"
  [[ $rc -eq 124 || $rc -eq 137 ]] && what="TIMEOUT after ${limit}s"
  echo "[$name] $what ($(( $(date +%s) - t0 ))s) -> $STEP_LOGS/$name.log"
  if [[ $rc -ne 0 ]]; then
    status=1
    tail -n 5 "$STEP_LOGS/$name.log" | sed 's/^/    /'
  fi
  return 0
}

finish_report() {  # finish_report RESULTS_JSON: the step summary, then report.py's table; exits with $status
  echo "== total $(( $(date +%s) - START ))s; steps:"; cat "$STEP_LOGS/steps.jsonl"
  if [[ -f "$1" ]]; then
    timeout 60 "$PY" benchmarks/report.py "$1" --print || status=1
  else
    echo "no results file: every benchmark step failed (see the logs in $STEP_LOGS)"; status=1
  fi
  exit $status
}
