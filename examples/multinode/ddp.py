"""Data-parallel training in miniature: each process fits y = 3x on its own shard of data, and
DistributedDataParallel averages the gradients across every process of every node, so all end
with the same weight. Rank 0 writes the result to $COOP_OUTPUT_DIR."""

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

backend = "nccl" if torch.cuda.is_available() else "gloo"
dist.init_process_group(backend)  # torchrun set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
rank, world = dist.get_rank(), dist.get_world_size()
device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if backend == "nccl" else torch.device("cpu")
print(f"process {rank} of {world} on node {os.environ.get('COOP_NODE_RANK', '?')} ({backend})", flush=True)

torch.manual_seed(rank)  # each process its own shard
x = torch.rand(256, 1, device=device)
y = 3 * x
model = DistributedDataParallel(torch.nn.Linear(1, 1, bias=False).to(device))
optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
for _ in range(60):
    optimiser.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()  # gradients averaged over all processes here
    optimiser.step()
weight = model.module.weight.item()
print(f"process {rank}: weight {weight:.4f} after 60 steps, loss {loss.item():.6f}", flush=True)
if rank == 0:
    out = Path(os.environ.get("COOP_OUTPUT_DIR", "."))
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps({"processes": world, "weight": round(weight, 4)}) + "\n")
dist.destroy_process_group()
