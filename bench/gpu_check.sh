#!/usr/bin/env bash
# One prepared run on a real GPU machine (the device tool): the agent's detection through NVML and
# through nvidia-smi, its calibration, and both LoRA examples on CUDA, with the GPU's raw outputs
# saved as fixtures. Needs python3 with torch; pydantic and friends come as wheels in .whl/.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}; mkdir -p "$OUT/fixtures"
if ! python3 -c "import pydantic_settings" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1
agent() { python3 -c 'from agent.main import app; app()' "$@"; }
F=$OUT/fixtures
nvidia-smi > "$F/nvidia-smi.txt"; nvidia-smi -L > "$F/nvidia-smi-L.txt"; nvidia-smi -q -x > "$F/nvidia-smi-q-x.xml"
fields() { python3 -c "from agent.parsers.nvidia_csv import $1 as f; print(','.join(f))"; }
nvidia-smi --query-gpu="$(fields INVENTORY_FIELDS)" --format=csv,nounits > "$F/nvidia-smi-query-gpu.csv"
nvidia-smi --query-gpu="$(fields TELEMETRY_FIELDS)" --format=csv,nounits > "$F/nvidia-smi-telemetry.csv"
export F
echo "== NVML vs nvidia-smi detection, and telemetry with a GPU process Coop did not start"
python3 - <<'PY' 2>&1 | tee "$OUT/detect-compare.txt"
import os, subprocess, sys, time
from agent import hardware as h
nv, src, w = h.detect_gpus()
smi = h._from_nvidia_smi(h.run_tool)
print("nvml:", src, [(g.index, g.name, g.memory_gb, g.compute_capability, g.uuid) for g in nv], w)
print("smi :", [(g.index, g.name, g.memory_gb, g.compute_capability, g.uuid) for g in smi.gpus], smi.warnings)
busy = subprocess.Popen([sys.executable, "-c", "import torch,time; a=torch.randn(8192,8192,device='cuda',dtype=torch.bfloat16)\nfor _ in range(4000): a@a\ntorch.cuda.synchronize()"])
deadline = time.time() + 60
while time.time() < deadline:
    tel, procs = h.read_telemetry()
    if procs and any((t.utilization_pct or 0) > 0 for t in tel): break
    time.sleep(0.5)
print("telemetry:", tel); print("processes:", procs, "busy pid:", busy.pid)
subprocess.run(["nvidia-smi", "--query-compute-apps=" + ",".join(h.APPS_FIELDS), "--format=csv,nounits"], stdout=open(os.environ["F"] + "/nvidia-smi-compute-apps.csv", "w"))
busy.kill()
PY
echo "== inspect (NVML first)"; agent inspect --json | tee "$OUT/inspect-nvml.json"
echo "== inspect --from nvidia-smi -q -x"; agent inspect --json --from "$F/nvidia-smi-q-x.xml" > "$OUT/inspect-xml.json"; echo rc=$?
[ -f "$F/nvidia-smi-query-gpu.csv" ] && { echo "== inspect --from csv"; agent inspect --json --from "$F/nvidia-smi-query-gpu.csv" > "$OUT/inspect-csv.json"; echo rc=$?; }
echo "== calibrate"; agent calibrate --json --seconds 20 | tee "$OUT/calibrate.json"
echo "== LoRA fine-tune on CUDA"
export COOP_JOB_ID=1 COOP_ATTEMPT=1 COOP_CHECKPOINT_DIR=/tmp/ckpt
cd examples/lora
( time python3 train.py ) > "$OUT/train.log" 2>&1; echo "train rc=$?"; tail -15 "$OUT/train.log"
echo "== resume: a second attempt finds the finished run"; COOP_ATTEMPT=2 python3 train.py 2>&1 | tail -3
echo "== eval on CUDA"; ( time python3 evaluate.py ) > "$OUT/eval.log" 2>&1; echo "eval rc=$?"; tail -12 "$OUT/eval.log"
cp /tmp/ckpt/final/score.json "$OUT/" 2>/dev/null
cd "$OUT" && tar czf fixtures.tgz fixtures && rm -rf fixtures
