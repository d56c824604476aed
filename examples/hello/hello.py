"""Prints what Coop passes to every job."""

import os
import platform

print(os.environ.get("GREETING", "hello"))
print(f"job {os.environ.get('COOP_JOB_ID')} attempt {os.environ.get('COOP_ATTEMPT')} on {platform.node()}")
print(f"checkpoints go to {os.environ.get('COOP_CHECKPOINT_DIR')}")
