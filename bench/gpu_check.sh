#!/usr/bin/env bash
# GPU check: training samples/s of senti's model (senti.model, sized by params.yaml) on a GPU
# and on the CPU of the same machine, under Keras' JAX backend; prints one JSON object.
# The GPU machine has JAX but no TensorFlow: the check runs `bench/train_throughput.py
# --synthetic` (random token ids, plain Keras fit) with TensorFlow and jieba made
# unimportable, so it proves too that the model needs neither.
#
#   bench/gpu_check.sh wheels   # here, once: the wheels a JAX-only machine lacks (keras,
#                               # pydantic, ruamel.yaml and theirs, the pins of constraints.txt)
#                               # -> build/gpu_check/wheels (34 MB; carry build/gpu_check)
#   bench/gpu_check.sh          # the check: GPU (float32 and mixed_float16) if JAX sees one,
#                               # then CPU; a few minutes. Env: PYTHON (default python3),
#                               # GPU_SAMPLES (default 16384), CPU_SAMPLES (default 1024)
#
# Where keras, pydantic or ruamel.yaml are missing, it installs them from the carried wheels
# into build/gpu_check/venv (which sees the machine's own JAX and NumPy); nothing is
# downloaded there. Without JAX it stops, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=build/gpu_check
wheels=$dir/wheels
python=${PYTHON:-python3}

if [[ ${1:-} == wheels ]]; then
  pip=.venv/bin/pip
  # Only what JAX does not bring (it brings numpy, ml_dtypes, scipy): pure-Python wheels once,
  # compiled ones for each CPython a GPU image may have.
  pure=(keras absl-py rich markdown-it-py mdurl Pygments namex packaging typing_extensions
        pydantic annotated-types typing-inspection ruamel.yaml)
  compiled=(h5py optree pydantic_core)
  mkdir -p "$wheels"
  "$pip" download -q --no-deps --only-binary=:all: -c constraints.txt -d "$wheels" "${pure[@]}"
  for version in 3.10 3.11 3.12 3.13; do
    "$pip" download -q --no-deps --only-binary=:all: -c constraints.txt -d "$wheels" \
      --python-version "$version" --platform manylinux2014_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 "${compiled[@]}"
  done
  du -sh "$wheels"
  exit 0
fi
[[ $# -eq 0 ]] || { echo "usage: bench/gpu_check.sh [wheels]" >&2; exit 2; }

if ! "$python" -c "import jax" 2>/dev/null; then
  echo "gpu_check: JAX is not installed for $python: this check runs Keras on JAX" \
       "(pip install jax, or jax[cuda12] on a GPU machine; set PYTHON to another interpreter)" >&2
  exit 2
fi
if ! "$python" -c "import keras, pydantic, ruamel.yaml" 2>/dev/null; then
  [[ -d $wheels ]] || { echo "gpu_check: keras, pydantic or ruamel.yaml missing for $python" \
    "and no $wheels: run 'bench/gpu_check.sh wheels' on a machine with the project's .venv" \
    "and carry $dir" >&2; exit 2; }
  [[ -x $dir/venv/bin/python ]] || "$python" -m venv --system-site-packages "$dir/venv"
  "$dir/venv/bin/python" -m pip install -q --no-index --find-links "$wheels" \
    keras pydantic ruamel.yaml
  python=$dir/venv/bin/python
fi

export KERAS_BACKEND=jax PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} TF_CPP_MIN_LOG_LEVEL=2
measure() {  # measure ENV... -- ARGS...: one JSON line from train_throughput.py --synthetic
  local -a env=()
  while [[ $1 != -- ]]; do env+=("$1"); shift; done
  shift
  env "${env[@]}" "$python" -c '
import runpy, sys
sys.modules.update(tensorflow=None, jieba=None)  # as on the GPU machine: neither importable
sys.argv = ["train_throughput.py", "--synthetic", *sys.argv[1:]]
runpy.run_path("bench/train_throughput.py", run_name="__main__")' "$@" | tail -n 1
}

gpus=$("$python" -c 'import jax
try:
    print(len(jax.devices("gpu")))
except RuntimeError:
    print(0)')
gpu=null gpu_mixed=null
if (( gpus > 0 )); then
  gpu=$(measure -- --samples "${GPU_SAMPLES:-16384}")
  gpu_mixed=$(measure -- --samples "${GPU_SAMPLES:-16384}" --mixed-precision)
fi
cpu=$(measure JAX_PLATFORMS=cpu -- --samples "${CPU_SAMPLES:-1024}")

"$python" - "$gpus" "$gpu" "$gpu_mixed" "$cpu" <<'EOF'
import json, os, sys

gpus, gpu, gpu_mixed, cpu = int(sys.argv[1]), *map(json.loads, sys.argv[2:])
result = {"gpus_seen_by_jax": gpus, "cpu_cores": os.cpu_count(), "gpu": gpu,
          "gpu_mixed_precision": gpu_mixed, "cpu": cpu,
          "gpu_speedup": round(gpu["samples_per_s"] / cpu["samples_per_s"], 1) if gpu else None}
if not gpus:
    result["note"] = "JAX sees no GPU here: only the CPU figure was measured"
print(json.dumps(result))
EOF
