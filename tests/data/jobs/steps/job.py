"""A test workload: counts steps, checkpoints each one, resumes from the checkpoint on a new attempt.

STEPS (5), STEP_S (0.1) pace it; GATE names a file it waits for before finishing, so a test
decides when the job may end; EXIT sets its exit code.
"""

import json
import os
import pathlib
import sys
import time

ckpt = pathlib.Path(os.environ["COOP_CHECKPOINT_DIR"])
ckpt.mkdir(parents=True, exist_ok=True)
state = ckpt / "step.json"
step = json.loads(state.read_text())["step"] if state.exists() else 0
print(
    f"job {os.environ['COOP_JOB_ID']} attempt {os.environ['COOP_ATTEMPT']} "
    f"gpus={os.environ.get('CUDA_VISIBLE_DEVICES', '')} marker={os.environ.get('MARKER', '')}",
    flush=True,
)
resumed_from = step
if step:
    print(f"resuming from step {step}", flush=True)
total = int(os.environ.get("STEPS", "5"))
while step < total:
    step += 1
    tmp = state.with_suffix(".tmp")
    tmp.write_text(json.dumps({"step": step}))
    tmp.replace(state)
    print(f"step {step}", flush=True)
    time.sleep(float(os.environ.get("STEP_S", "0.1")))
gate = os.environ.get("GATE")
deadline = time.monotonic() + 600
while gate and not pathlib.Path(gate).exists() and time.monotonic() < deadline:
    time.sleep(0.05)
out = os.environ.get("COOP_OUTPUT_DIR")
if out:
    result = {"steps": step, "attempt": int(os.environ["COOP_ATTEMPT"]), "resumed_from": resumed_from}
    pathlib.Path(out, "result.json").write_text(json.dumps(result))
print("done", flush=True)
sys.exit(int(os.environ.get("EXIT", "0")))
