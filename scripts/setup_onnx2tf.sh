#!/usr/bin/env bash
# Create the separate onnx2tf environment edgepack runs as a subprocess (idempotent).
#
# onnx2tf hard-pins tensorflow 2.19, onnx 1.19, onnxruntime 1.23, numpy 1.26 and
# ai-edge-litert 2.1, which conflict with edgepack's own environment, so it gets
# its own venv (default: .venv-onnx2tf at the repository root; override with
# EDGEPACK_ONNX2TF_VENV). edgepack finds it there, or through EDGEPACK_ONNX2TF_PYTHON.
#
# onnx2tf downloads a calibration sample (.npy) for every 3-channel 4-D input,
# even for float conversions; it is generated here instead (no network at run time)
# and copied into onnx2tf's working directory by edgepack.
#
# Usage: scripts/setup_onnx2tf.sh [PYTHON]      (PYTHON defaults to python3)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${1:-${PYTHON:-python3}}"
VENV="${EDGEPACK_ONNX2TF_VENV:-$ROOT/.venv-onnx2tf}"
PY="$VENV/bin/python"
STAMP="$VENV/.edgepack-onnx2tf-installed"
SAMPLE="calibration_image_sample_data_20x128x128x3_float32.npy"

# Every package of the environment, pinned (tested together on Python 3.11, x86-64).
read -r -d '' PINS <<'EOF' || true
absl-py==2.5.1
ai-edge-litert==2.1.0
astunparse==1.6.3
backports.strenum==1.2.8
certifi==2026.10.19.post1
charset-normalizer==3.5.3
coloredlogs==15.0.1
flatbuffers==25.12.19
gast==0.7.0
google-pasta==0.2.0
grpcio==1.85.3
h5py==3.11.0
humanfriendly==10.0
idna==3.20
json2onnx==2.0.3
keras==3.15.1
libclang==18.1.1
Markdown==3.11.3
markdown-it-py==4.3.0
MarkupSafe==3.0.4
mdurl==0.1.2
ml_dtypes==0.5.1
mpmath==1.3.0
namex==0.1.0
numpy==1.26.4
onnx==1.19.1
onnx2json==2.0.4
onnx2tf==1.29.24
onnx_graphsurgeon==0.5.8
onnxoptimizer==0.4.2
onnxruntime==1.23.0
onnxsim==0.4.36
opencv-python==4.11.0.86
opt_einsum==3.4.0
optree==0.20.0
packaging==26.4
protobuf==4.25.5
psutil==5.9.5
Pygments==2.21.0
requests==2.32.5
rich==15.0.0
sam4onnx==2.0.0
sbi4onnx==1.0.7
scc4onnx==1.0.7
scs4onnx==1.0.18
sde4onnx==1.0.0
sed4onnx==1.0.5
simple_onnx_processing_tools==1.1.32
sio4onnx==1.0.3
sit4onnx==1.0.10
six==1.17.0
sna4onnx==1.0.6
snc4onnx==1.0.14
snd4onnx==1.1.7
sne4onnx==2.0.1
sng4onnx==2.0.1
soa4onnx==1.0.5
soc4onnx==1.0.2
sod4onnx==1.0.0
sog4onnx==1.0.17
sor4onnx==1.0.7
spo4onnx==1.0.5
ssc4onnx==1.0.8
ssi4onnx==1.0.4
svs4onnx==1.0.0
sympy==1.14.0
tensorboard==2.19.0
tensorboard-data-server==0.7.2
tensorflow==2.19.0
tensorflow-io-gcs-filesystem==0.37.1
termcolor==3.3.0
tf_keras==2.19.0
tqdm==4.70.1
typing_extensions==4.16.0
urllib3==2.8.0
Werkzeug==3.1.9
wrapt==2.5.2
EOF

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(printf '%s' "$PINS" | sha256sum | cut -c1-16)" ] \
   && [ -f "$VENV/share/edgepack/$SAMPLE" ]; then
  exit 0
fi

test -x "$PY" || "$PYTHON" -m venv "$VENV"
CONSTRAINTS="$VENV/constraints-onnx2tf.txt"
printf '%s\n' "$PINS" > "$CONSTRAINTS"
# The machine-wide pip constraint (if any) is about torch; this env has no torch.
PIP_CONSTRAINT= "$PY" -m pip install --quiet --disable-pip-version-check \
  -c "$CONSTRAINTS" onnx2tf==1.29.24
"$PY" -m pip check

mkdir -p "$VENV/share/edgepack"
# A fixed stand-in for onnx2tf's downloaded sample: edgepack always passes its own
# calibration data, so onnx2tf only needs the file to exist and have the right shape.
"$PY" - "$VENV/share/edgepack/$SAMPLE" <<'EOF'
import sys
import numpy as np
rng = np.random.default_rng(0)
np.save(sys.argv[1], rng.random((20, 128, 128, 3), dtype=np.float32))
EOF
"$PY" -c "import onnx2tf, tensorflow, ai_edge_litert" 2>/dev/null
printf '%s' "$PINS" | sha256sum | cut -c1-16 > "$STAMP"
echo "onnx2tf environment ready: $VENV"
