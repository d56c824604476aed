"""One rank of a gang job: a torch.distributed (gloo) all-reduce across the gang's nodes.

Each rank adds rank + 1; every rank prints the sum it got, and rank 0 writes it to its outputs. With
HOLD_FIRST_ATTEMPT set, the first attempt waits (in a rendezvous'd group) until it is stopped, so a
test can preempt it; later attempts go straight through. With FAIL_RANK=k, rank k exits 3 once in
the group and the others wait until stopped.
"""

import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

rank, world = int(os.environ["COOP_NODE_RANK"]), int(os.environ["COOP_NUM_NODES"])
print(
    f"rank {rank} of {world}: attempt {os.environ['COOP_ATTEMPT']}, master "
    f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
    flush=True,
)
dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world)
print(f"rank {rank}: joined the group", flush=True)
if os.environ.get("FAIL_RANK") == str(rank):
    print(f"rank {rank}: failing on purpose", flush=True)
    sys.exit(3)
hold = os.environ.get("HOLD_FIRST_ATTEMPT") and os.environ["COOP_ATTEMPT"] == "1"
if hold or os.environ.get("FAIL_RANK"):
    while True:  # until stopped
        time.sleep(0.2)
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
total = value.item()
print(f"rank {rank}: sum {total:g}", flush=True)
if rank == 0:
    Path(os.environ["COOP_OUTPUT_DIR"], "sum.txt").write_text(f"{total:g}\n")
dist.destroy_process_group()
sys.exit(0 if total == world * (world + 1) / 2 else 3)
