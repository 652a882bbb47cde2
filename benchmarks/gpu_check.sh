#!/usr/bin/env bash
# One-call GPU check: the MLP step against PyTorch (when installed), the conv config's train step and MFU at
# batch 64 and 256 in float32 and bfloat16, and `mmvae demo`, then one table (benchmarks/gpu_table.py).
# Sized to finish in under 8 minutes on one GPU (each stage has its own time limit; a stage that fails or runs
# out of time is a row saying so, not the end of the check).
#
#   bash benchmarks/gpu_check.sh [OUT]            # OUT defaults to gpu-check/; the table is also OUT/table.md
#   SMOKE=1 bash benchmarks/gpu_check.sh OUT      # tiny sizes: try the script itself on a CPU in a minute or two
#   PY=path/to/python bash benchmarks/gpu_check.sh  # the Python that has mmvae and jax[cuda] installed
set -uo pipefail
OUT=${1:-gpu-check}
PY=${PY:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
if [ "${SMOKE:-0}" = 1 ]; then
  MLP="--batch-sizes 10 --steps 3 --budget 2"
  CONV="--tiny --batch-sizes 4 --steps 2"
  DEMO="--identities 6 --config.train.num_steps=30 --config.train.eval_every=30 --config.train.checkpoint_every=30"
  LIMIT=300
else
  MLP="--batch-sizes 64,1024 --steps 30 --budget 10"
  CONV="--batch-sizes 64,256 --steps 20"
  DEMO=""
  LIMIT=150
fi
stage() {  # name, seconds, command...: runs one stage with its log in OUT/NAME.log and its exit status in OUT/NAME.rc
  local name=$1 limit=$2; shift 2
  echo "gpu_check: $name" >&2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$rc $((SECONDS - t0))" >"$OUT/$name.rc"
}
"$PY" -c "import jax, json; d = jax.devices()[0]; print(json.dumps({'platform': d.platform, 'kind': d.device_kind, \
'count': jax.device_count(), 'jax': jax.__version__}))" >"$OUT/device.json" 2>"$OUT/device.log"
stage mlp "$LIMIT" "$PY" "$HERE/vs_pytorch.py" $MLP --json "$OUT/mlp.json"
for dtype in float32 bfloat16; do
  stage "conv_$dtype" "$LIMIT" "$PY" "$HERE/train_throughput.py" --configs conv $CONV --set "model.dtype=$dtype" \
    --json "$OUT/conv_$dtype.json"
done
stage demo $((LIMIT * 2)) "$PY" -c "import sys; from mmvae import cli; sys.exit(cli.main())" demo --workdir "$OUT/demo" $DEMO
"$PY" "$HERE/gpu_table.py" "$OUT" | tee "$OUT/table.md"
