#!/usr/bin/env bash
# Epoch time of RETURNN's 12AX LSTM demo (demos/demo-tf-vanilla-lstm.12ax.config of mainline RETURNN, unchanged) on
# this trainer and on RETURNN's TensorFlow backend, one thread each. The per-epoch time is the difference between a
# 6-epoch and a 1-epoch run divided by 5, so that start-up (imports, graph construction) is left out; as wall time
# and as CPU time of the process (user + system, the steadier figure on a shared machine).
#
#     benchmarks/returnn_tf_12ax.sh TF_PYTHON RETURNN_CHECKOUT [ROUNDS]
#
# TF_PYTHON: a Python with tensorflow-cpu, numpy, h5py, dm-tree (e.g. a venv); RETURNN_CHECKOUT: mainline RETURNN.
set -euo pipefail
tf_python=$1
returnn_dir=$2
rounds=${3:-3}
repo=$(cd "$(dirname "$0")/.." && pwd)
config="$returnn_dir/demos/demo-tf-vanilla-lstm.12ax.config"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=1 TF_CPP_MIN_LOG_LEVEL=3
single_thread='{"intra_op_parallelism_threads": 1, "inter_op_parallelism_threads": 1}'

seconds() {  # seconds NAME EPOCHS: "wall cpu" seconds of one training run from scratch
  local name=$1 epochs=$2 start cpu
  rm -rf "$work/run" && mkdir -p "$work/run"
  start=$(date +%s.%N)
  cpu=$( { TIMEFORMAT=%U+%S; time run "$name" "$epochs"; } 2>&1 >/dev/null | tail -1)
  echo "$(echo "$(date +%s.%N) - $start" | bc) $(echo "$cpu" | bc)"
}

run() {
  local name=$1 epochs=$2
  if [ "$name" = tf ]; then
    (cd "$work/run" && "$tf_python" "$returnn_dir/rnn.py" "$config" ++num_epochs "$epochs" \
      ++model "$work/run/model" ++tf_session_opts "$single_thread" ++log_verbosity 2 >/dev/null 2>&1)
  else
    (cd "$work/run" && python3 "$repo/rnn.py" "$config" ++num_epochs "$epochs" ++model "$work/run/model" \
      ++log_verbosity 2 >/dev/null 2>&1)
  fi
}

for round in $(seq "$rounds"); do
  for name in torch tf; do
    read -r one_wall one_cpu <<<"$(seconds $name 1)"
    read -r six_wall six_cpu <<<"$(seconds $name 6)"
    echo "round $round $name: epoch wall $(echo "scale=3; ($six_wall - $one_wall) / 5" | bc) s," \
      "cpu $(echo "scale=3; ($six_cpu - $one_cpu) / 5" | bc) s (1 epoch: $one_wall s wall, $one_cpu s cpu;" \
      "6 epochs: $six_wall s wall, $six_cpu s cpu)"
  done
done
