"""Could a job *ever* run somewhere? Checked at submit so impossible requests are refused, not queued.

Pure: works on :class:`NodeShape` snapshots, never on the database.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from coop.spec import Resources, normalise_gpu_model


@dataclass(frozen=True)
class GpuShape:
    model: str
    memory_gb: float
    compute_capability: float | None


@dataclass(frozen=True)
class NodeShape:
    name: str
    tier: str
    cpus: int
    memory_gb: float
    gpus: tuple[GpuShape, ...]
    machines: int = 1  # a pool's node class: Slurm may pick this many machines of this shape


@dataclass(frozen=True)
class Refusal:
    field: str
    message: str
    fix: str


def nominal_gb(measured: float) -> float:
    """GPU memory as the card is sold: tools report GiB a little under it (an "80GB" H100 reads 79.6,
    a "24GB" RTX 4090 23.99), so a reading within 0.6 of a whole number counts as that number."""
    whole = round(measured)
    return float(whole) if abs(measured - whole) <= 0.6 else measured


def gpu_matches(res: Resources, gpu: GpuShape) -> bool:
    if res.gpu_memory is not None and not res.gpu_memory.contains(nominal_gb(gpu.memory_gb)):
        return False
    if res.gpu and gpu.model not in {normalise_gpu_model(m) for m in res.gpu}:
        return False
    cc = res.compute_capability
    return cc is None or (gpu.compute_capability is not None and cc.contains(gpu.compute_capability))


def tier_matches(res: Resources, node: NodeShape) -> bool:
    return res.tier == "any" or res.tier == node.tier


def fits(res: Resources, node: NodeShape) -> bool:
    """Static fit: the node, empty, could hold the job."""
    if not tier_matches(res, node) or node.cpus < res.cpus:
        return False
    if res.memory_gb is not None and node.memory_gb < res.memory_gb:
        return False
    return sum(1 for g in node.gpus if gpu_matches(res, g)) >= res.gpus


def _fmt(gb: float) -> str:
    return f"{gb:g} GB"


def why_impossible(res: Resources, nodes: list[NodeShape]) -> Refusal | None:
    """None when some node could run the job, or when nothing is registered yet (the job waits).

    Otherwise the first requirement that no node of the job's tier meets, checked one at a time so the
    user learns what to change; when each is met somewhere, that no single node meets them together."""
    if not nodes:
        return None
    fitting = [n for n in nodes if fits(res, n)]
    if fitting:
        return _nodes_refusal(res, fitting)
    tiered = [n for n in nodes if tier_matches(res, n)]
    if not tiered:
        return _tier_refusal(res, nodes)
    for check in _CHECKS:
        refusal = check(res, tiered)
        if refusal is not None:
            return refusal
    return Refusal(
        "resources",
        "no single registered node meets all of these requirements together",
        "relax one of gpus, gpu_memory, gpu, compute_capability, cpus or memory",
    )


def _nodes_refusal(res: Resources, fitting: list[NodeShape]) -> Refusal | None:
    """A gang needs ``res.nodes`` machines that each fit: separate nodes, or one pool class with enough
    machines (Slurm picks them; a gang never mixes a pool with donated nodes)."""
    if res.nodes <= 1 or any(n.machines >= res.nodes for n in fitting):
        return None
    alone = sum(1 for n in fitting if n.machines == 1)
    if alone >= res.nodes:
        return None
    most = max([alone] + [n.machines for n in fitting])
    return Refusal(
        "resources.nodes",
        f"{res.nodes} nodes requested but only {most} registered "
        f"{'node' if most == 1 else 'nodes'} can each hold what one node needs",
        f"ask for at most {most} nodes, or fewer GPUs, CPUs or memory per node",
    )


def _tier_refusal(res: Resources, nodes: list[NodeShape]) -> Refusal:
    tiers = sorted({n.tier for n in nodes})
    return Refusal(
        "resources.tier",
        f"no {res.tier} capacity is registered (there is: {', '.join(tiers)})",
        f"use tier: any or one of {', '.join(tiers)}",
    )


def _gpus_refusal(res: Resources, tiered: list[NodeShape]) -> Refusal | None:
    most_gpus = max(len(n.gpus) for n in tiered)
    if res.gpus > most_gpus:
        return Refusal(
            "resources.gpus",
            f"{res.gpus} GPUs requested but the largest node has {most_gpus}",
            f"ask for at most {most_gpus} GPUs on one node",
        )
    return None


def _gpus_of(tiered: list[NodeShape]) -> list[GpuShape]:
    return [g for n in tiered for g in n.gpus]


def _gpu_memory_refusal(res: Resources, tiered: list[NodeShape]) -> Refusal | None:
    all_gpus = _gpus_of(tiered)
    want = res.gpu_memory
    if not res.gpus or want is None or any(want.contains(nominal_gb(g.memory_gb)) for g in all_gpus):
        return None
    sizes = sorted({nominal_gb(g.memory_gb) for g in all_gpus})
    if want.min_gb > sizes[-1]:
        return Refusal(
            "resources.gpu_memory",
            f"{_fmt(want.min_gb)} per GPU requested but no GPU has more than {_fmt(sizes[-1])}",
            f"ask for at most {sizes[-1]:g}GB per GPU (a range like 16GB..{sizes[-1]:g}GB also works)",
        )
    return Refusal(
        "resources.gpu_memory",
        f"no GPU has {_fmt(want.min_gb)}..{_fmt(want.max_gb or 0)} of "
        f"memory (sizes registered: {', '.join(_fmt(x) for x in sizes)})",
        "widen the gpu_memory range to include one of those sizes",
    )


def _gpu_model_refusal(res: Resources, tiered: list[NodeShape]) -> Refusal | None:
    if not (res.gpus and res.gpu):
        return None
    wanted = {normalise_gpu_model(m) for m in res.gpu}
    models = sorted({g.model for g in _gpus_of(tiered)})
    if wanted & set(models):
        return None
    return Refusal(
        "resources.gpu",
        f"no registered GPU is a {' or '.join(sorted(wanted))}",
        f"choose among {', '.join(models) or 'none'}, or drop the model list",
    )


def _compute_capability_refusal(res: Resources, tiered: list[NodeShape]) -> Refusal | None:
    want = res.compute_capability
    if not res.gpus or want is None:
        return None
    ccs = [g.compute_capability for g in _gpus_of(tiered) if g.compute_capability is not None]
    if any(want.contains(c) for c in ccs):
        return None
    return Refusal(
        "resources.compute_capability",
        f"no registered GPU has compute capability {want.min:g}+ (highest: {max(ccs, default=0):g})",
        "lower the compute_capability requirement",
    )


def _cpus_refusal(res: Resources, tiered: list[NodeShape]) -> Refusal | None:
    most_cpus = max(n.cpus for n in tiered)
    if res.cpus > most_cpus:
        return Refusal(
            "resources.cpus",
            f"{res.cpus} CPUs requested but the largest node has {most_cpus}",
            f"ask for at most {most_cpus} CPUs",
        )
    return None


def _memory_refusal(res: Resources, tiered: list[NodeShape]) -> Refusal | None:
    most_mem = max(n.memory_gb for n in tiered)
    if res.memory_gb is not None and res.memory_gb > most_mem:
        return Refusal(
            "resources.memory",
            f"{_fmt(res.memory_gb)} of RAM requested but the largest node has {_fmt(most_mem)}",
            f"ask for at most {most_mem:g}GB",
        )
    return None


# the order in which why_impossible names an unmet requirement (after the tier)
_CHECKS: tuple[Callable[[Resources, list[NodeShape]], Refusal | None], ...] = (
    _gpus_refusal,
    _gpu_memory_refusal,
    _gpu_model_refusal,
    _compute_capability_refusal,
    _cpus_refusal,
    _memory_refusal,
)
