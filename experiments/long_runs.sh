#!/usr/bin/env bash
# The long measurements still to finish on this 2-core CPU, in two lanes of one thread each (two 2-thread jobs
# starve each other: the zero-shot job got 40% of a core beside a 2-thread KD run, a full core with one thread
# each). Every command resumes where it stopped (pipeline stages, zero-shot answer caches, training
# checkpoints), so rerun this script after an interruption; what finished is skipped.
#
#   bash experiments/long_runs.sh            # both lanes in the background, logs in runs/long-runs-*.log
#
# Lane A: the recovery comparison (issue 17), then Figure 5 and Table 7 (issue 19).
# Lane B: the 7-task zero-shot tables on full sets, bfloat16 (issue 16).
# Afterwards: python experiments/recovery_table.py; python experiments/zeroshot_tables.py --report-only;
# depthprune report runs/<name> --output docs/results/<dir>.
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=.venv/bin/python
DP=.venv/bin/depthprune
mkdir -p runs

lane_a() {
  nice -n 10 "$DP" run examples/recovery_gemma3_270m.yaml
  nice -n 10 "$DP" run examples/figure5_init.yaml
  nice -n 10 "$DP" run examples/table7_calibration.yaml --only '*-n10/*' --only '*-n50/*' --only '*-n100/*'
  nice -n 10 "$DP" run examples/table7_calibration.yaml
}

lane_b() {
  nice -n 10 "$PY" experiments/zeroshot_tables.py
}

lane_a > runs/long-runs-a.log 2>&1 &
lane_b > runs/long-runs-b.log 2>&1 &
echo "lanes started (pids $(jobs -p | tr '\n' ' ')); logs: runs/long-runs-a.log, runs/long-runs-b.log"
