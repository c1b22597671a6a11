#!/usr/bin/env bash
# The long measurements still to finish on this 2-core CPU, in two lanes of one thread each (two 2-thread jobs
# starve each other: the zero-shot job got 40% of a core beside a 2-thread KD run, a full core with one thread
# each). runs/ is not committed and a new checkout starts without it, so each lane works in units that end
# with a committed-size result: a recovery row, a Table 7 variant, a Figure 5 variant (each *_table.py
# --pending lists what the committed JSON lacks, the unpruned model's evaluation only while its table has no
# dense row), a zero-shot task or 1000-document HellaSwag shard. Commit
# docs/results/ as they land; rerunning this script (in the same or a new checkout) skips what is committed.
#
#   bash experiments/long_runs.sh            # both lanes in the background, logs in runs/long-runs-*.log
#   touch runs/STOP                          # lane A stops after its current unit (a unit cut off is lost);
#                                            # lane B can be killed at any time: its answer caches resume it
#
# Lane A: the recovery comparison (issue 17), then Table 7 and Figure 5 (issue 19), each table rewritten after
#   every unit. Lane B: the 7-task zero-shot tables on full sets (issue 16), then the paper's Tables 5, 2 and 3
#   with zero-shot (experiments/paper_tables.py) and full test-set PPL (issue 19).
set -uo pipefail
set -f  # the --only patterns are globs for depthprune, not for the shell
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=.venv/bin/python
DP=.venv/bin/depthprune
mkdir -p runs

# Partial ppl scores (runs/**/.scores-*.partial.json, a few hundred bytes each, written after every calibration
# batch) are copied to docs/results/resume/ every few minutes and back into runs/ at the start, so that scoring
# that takes longer than a sitting (Table 7's 1000 samples: ~6 h on one thread) continues in the next checkout.
RESUME=docs/results/resume
restore_partials() { [ -d "$RESUME" ] && (cd "$RESUME" && find . -name '.scores-*.partial.json' -exec cp -n --parents {} ../../../runs/ \;); }
save_partials() { mkdir -p "$RESUME" && (cd runs && find . -name '.scores-*.partial.json' -exec cp --parents {} "../$RESUME/" \;); }

units() {  # experiment config, table script: run each pending unit, then rewrite the table
  local config=$1 table=$2 pattern
  for pattern in $("$PY" "$table" --pending); do
    [ -e runs/STOP ] && { echo "runs/STOP: stopping before $pattern"; return; }
    nice -n 10 "$DP" run "$config" --only "$pattern" && "$PY" "$table"
  done
}

lane_a() {
  units examples/recovery_gemma3_270m.yaml experiments/recovery_table.py
  units examples/table7_calibration.yaml experiments/table7_table.py
  units examples/figure5_init.yaml experiments/figure5_table.py
}

lane_b() {  # zero-shot small tasks of every model, the HellaSwag shards, Tables 5/2/3 with zero-shot, full PPL
  nice -n 10 "$PY" experiments/zeroshot_tables.py --tasks piqa,boolq,arc_easy,arc_challenge,openbookqa,winogrande
  nice -n 10 "$PY" experiments/zeroshot_tables.py
  nice -n 10 "$PY" experiments/paper_tables.py
  nice -n 10 "$PY" experiments/full_ppl_tables.py
}

restore_partials
rm -f runs/STOP
(while sleep 300; do save_partials; done) > /dev/null 2>&1 &
lane_a > runs/long-runs-a.log 2>&1 &
lane_b > runs/long-runs-b.log 2>&1 &
echo "lanes started (pids $(jobs -p | tr '\n' ' ')); logs: runs/long-runs-a.log, runs/long-runs-b.log"
