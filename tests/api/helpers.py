from __future__ import annotations

from typing import Any

from coop.schemas import GpuSpec, NodeRegister


def job_spec(name: str = "lora", gpus: int = 1, **resources: Any) -> dict[str, Any]:
    return {"name": name, "kind": "finetune", "run": "python train.py", "resources": {"gpus": gpus, **resources}}


def node(
    name: str,
    gpus: int = 2,
    memory_gb: float = 24,
    model: str = "NVIDIA GeForce RTX 4090",
    cc: float = 8.9,
    cpus: int = 16,
) -> NodeRegister:
    return NodeRegister(
        name=name,
        cpus=cpus,
        memory_gb=64,
        os="Linux",
        python_version="3.11.7",
        tflops_per_gpu=165,
        gpus=[
            GpuSpec(index=i, uuid=f"GPU-{name}-{i}", name=model, memory_gb=memory_gb, compute_capability=cc)
            for i in range(gpus)
        ],
    )
