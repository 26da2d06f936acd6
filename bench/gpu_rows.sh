#!/usr/bin/env bash
# The GPU rows docs/models.md still lacks, in one call of the device tool (a lease is 15 minutes,
# the machine's start included), most wanted first:
#   1. load      loading the SAO Small shape against reading its file (issue 22's first table)
#   2. sao-1.0   the SAO 1.0 shape through the command, 100 steps (docs/models.md, speed of the command)
#   3. sa3-medium  SA3 Medium's 8-step infill (docs/models.md, Stable Audio 3)
# Each row gets what is left of SECONDS (the first argument) and writes its table to $OUT/<row>/
# as it goes, its output to $OUT/<row>.log, and one line to $OUT/gpu_rows.md: a call cut short
# still returns every row that finished (7 files; the device tool returns 8).
#
# On the CPU machine, first: the wheels of docs/training.md's `pip download` line in .data/wheels
# (the GPU image lacks soundfile and librosa). Then one call, and give_back right after it:
#   run(carry=[".data/wheels"], timeout_s=600, command='bash bench/gpu_rows.sh 560')
# The same sequence on tiny shapes and the CPU, to check the script (about a minute):
#   OUT=/tmp/rows bash bench/gpu_rows.sh 300 --smoke
set -u
seconds=${1:?usage: bench/gpu_rows.sh SECONDS [--smoke]}
smoke=${2:-}
: "${OUT:?set OUT to the folder the tables go to}"
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)  # absolute, before the cd below
cd "$(dirname "$0")/.."
summary="$OUT/gpu_rows.md"
deadline=$((SECONDS + seconds))

if [ -d .data/wheels ] && ! python3 -c "import soundfile, librosa" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .data/wheels/*.whl \
        || { echo "installing .data/wheels failed" >> "$summary"; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
{ echo "# bench/gpu_rows.sh $(git rev-parse --short HEAD 2>/dev/null), $(date -u '+%F %H:%M') UTC"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
  echo; } > "$summary"

row() {  # NAME COMMAND...: run it with what is left of the time, its table going to $OUT/NAME
    local name=$1 left=$((deadline - SECONDS)) started=$SECONDS status
    shift
    if [ "$left" -lt 30 ]; then
        echo "- $name: not run, ${left} s left" >> "$summary"
        return
    fi
    timeout --kill-after=10 "$left" "$@" --out "$OUT/$name" > "$OUT/$name.log" 2>&1
    status=$?
    echo "- $name: exit $status after $((SECONDS - started)) s$([ $status = 124 ] && echo ' (cut off)'): $*" >> "$summary"
}

if [ "$smoke" = --smoke ]; then
    row load python3 bench/cli_speed.py --load-only --shapes demo --device cpu --rounds 2
    row sao-1.0 python3 bench/cli_speed.py --shapes tiny-random --steps 4 --repeats 1 --device cpu
    row sa3-medium python3 bench/sa3_speed.py --shape tiny --device cpu
else
    row load python3 bench/cli_speed.py --load-only --shapes sao-small-shape
    row sao-1.0 python3 bench/cli_speed.py --shapes sao-1.0-shape
    row sa3-medium python3 bench/sa3_speed.py --shape medium --device cuda
fi
cat "$summary"
