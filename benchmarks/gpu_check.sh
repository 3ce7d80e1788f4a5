#!/usr/bin/env bash
# The GPU checks in one run of under 10 minutes (a lent GPU machine's time is short): the CUDA tests,
# benchmarks/speed.py --device cuda (every path, d3rlpy's IQL beside them), graph replays against learn_offline
# (benchmarks/graph_replays.py: the device's own rate, and its kernels under the profiler), a 1M-update run with
# IQL's defaults (stopped early if it runs past its time) and many seeds in one process. Each stage has its own time
# limit, so that a stage that hangs or fails leaves the others' figures. Every stage's output goes to
# OUTPUT_DIR/log.txt, the figures to OUTPUT_DIR (speed_cuda_threads1.json, graph_replays_cuda.json,
# million_cuda.json, multi_seed_cuda.json; the profiler's trace graph_replays_trace_cuda.json.gz): copy those into
# benchmarks/results and run `python benchmarks/speed.py --render` to add them to speed.md.
#
# Usage (from the repository root, with the project's packages importable): bash benchmarks/gpu_check.sh OUTPUT_DIR
set -u
out=$(realpath -m "${1:?usage: bash benchmarks/gpu_check.sh OUTPUT_DIR}")
mkdir -p "$out"
log="$out/log.txt"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

stage() {  # stage NAME SECONDS COMMAND...: run COMMAND with a time limit, its output in the log
    local name=$1 seconds=$2
    shift 2
    echo "=== $name ($(date +%T), limit ${seconds} s): $*" >>"$log"
    local start=$SECONDS
    timeout -k 10 "$seconds" "$@" >>"$log" 2>&1  # -k: killed 10 s after a SIGTERM it ignores
    local status=$?
    echo "=== $name: exit $status after $((SECONDS - start)) s" >>"$log"
    [ "$status" -eq 0 ] || failed="$failed $name($status)"
}
failed=""

stage environment 20 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv;
    python3 -c "import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name())";
    python3 -c "import psutil, structlog, d3rlpy"'  # the benchmarks' own packages: missing, three stages fail
# -v: each test's result reaches the log as it ends (a stage past its limit keeps them; -q prints only at the end);
# the files whose CUDA tests have not passed on a GPU yet come first
stage cuda-tests 115 python3 -m pytest -v --tb=short -p no:cacheprovider tests/test_multi_seed.py tests/test_iql.py \
    tests/test_fast_path.py tests/test_device_buffers.py -k cuda
# (the eager device-buffer paths, 98 and 121 updates/s on the H200, are left out for time)
stage speed 150 python3 benchmarks/speed.py --device cuda --shapes antmaze --updates 300 --rounds 3 --warmup 30 \
    --no-memory --paths plain,d3rlpy,compiled,cudagraph,compiled-cudagraph,compiled-cudagraph-outside --output-dir "$out"
stage graph-replays 105 python3 benchmarks/graph_replays.py --updates-per-replay 1 4 16 --seconds 5 \
    --learn-offline-updates 10000 --profile-replays 50 --output-dir "$out"
# a chunk starts only if it should end by --max-seconds (at the last chunk's pace); the figures are saved after
# each chunk (a first chunk past the limit, compilation included, leaves none)
stage million 90 python3 benchmarks/million_updates.py --device cuda --path auto --max-seconds 60 --output-dir "$out"
# eight seeds, 256x256: together eagerly and in a CUDA graph, and the compiled update in it (timed last: what came
# before is saved first), against the eight run one by one eagerly; the 0.8 K target compares the graph's rate with
# one seed's fastest, speed's compiled-cudagraph; K = 1 is left out for time
stage multi-seed 110 python3 benchmarks/multi_seed_speed.py --device cuda --updates 100 --rounds 2 \
    --learners 8 --widths 256 --compiled --output-dir "$out"
echo "=== stages that failed or ran past their limit:${failed:- none}" | tee -a "$log"
