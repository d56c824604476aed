"""From ``sinfo`` nodes to the node classes Coop schedules on (pure).

A class is a set of nodes of one shape: the same mapped GPU model and count, CPUs and memory. The
scheduler sees each class as one node of that shape; Slurm picks the actual node. GPUs whose GRES
type is not in the pool's GRES map are not offered (Coop could not tell what they are).
"""

from __future__ import annotations

from collections import defaultdict

from coop.server.backends.slurm.config import NodeClass, SlurmPoolConfig
from coop.server.backends.slurm.parse import SinfoNode


def _gpu_of(node: SinfoNode, config: SlurmPoolConfig) -> tuple[str, str, int] | None:
    """(model, GRES spec, count) of the node's mapped GPUs; typed entries of the map win over untyped."""
    by_spec = {spec: model for model, spec in config.gres_map.items()}
    found: dict[tuple[str, str], int] = {}
    for g in node.gres:
        if g.name != "gpu":
            continue
        typed = f"gpu:{g.type}" if g.type else None
        if typed and typed in by_spec:
            key = (by_spec[typed], typed)
        elif "gpu" in by_spec:
            key = (by_spec["gpu"], "gpu")
        else:
            continue
        found[key] = found.get(key, 0) + g.count
    if not found:
        return None
    # a node with several mapped models is offered as its largest group (rare on clusters)
    (model, spec), count = max(found.items(), key=lambda kv: (kv[1], kv[0]))
    return model, spec, count


def node_classes(nodes: list[SinfoNode], config: SlurmPoolConfig) -> list[NodeClass]:
    """Group the partition's nodes by shape; ``nodes`` comes from ``parse_sinfo``."""
    groups: dict[tuple[str | None, str | None, int, int, float], list[SinfoNode]] = defaultdict(list)
    seen: set[str] = set()
    for node in nodes:
        if config.partition and node.partition != config.partition:
            continue
        if node.name in seen:  # a node listed once per partition it is in
            continue
        seen.add(node.name)
        gpu = _gpu_of(node, config)
        model, spec, count = gpu if gpu else (None, None, 0)
        memory_gb = round(node.memory_mb / 1024, 1)
        groups[(model, spec, count, node.cpus, memory_gb)].append(node)
    out = []
    for (model, spec, count, cpus, memory_gb), members in groups.items():
        info = config.gpu(model) if model else None
        label = f"{model}x{count}" if model else "cpu"
        out.append(
            NodeClass(
                name=f"{label}-{cpus}cpu-{memory_gb:g}gb",
                model=model,
                gres=spec,
                gpus=count,
                gpu_memory_gb=info.memory_gb if info else 0.0,
                compute_capability=info.compute_capability if info else None,
                tflops_per_gpu=info.tflops if info else None,
                cpus=cpus,
                memory_gb=memory_gb,
                nodes=len(members),
                usable=sum(1 for n in members if n.usable),
            )
        )
    return sorted(out, key=lambda c: c.name)
