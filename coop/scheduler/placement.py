"""One placement cycle: which pending jobs start now, on which node and GPUs, and why the rest wait.

Pure: ``place`` copies what it changes and never touches the views it is given.

Speed comes from never scanning jobs x nodes. Nodes are grouped into *classes* of identical static
shape (tier, GPUs, CPUs, RAM); each class of identical GPUs keeps its schedulable nodes in buckets by
free-GPU count, fastest calibrated card first. Classes get one global position, sorted by the
best-fit order (nominal GPU memory, then node size), and ``avail[b]`` is a bitset of the classes
whose bucket ``b`` is not empty. A request's matching classes are one more bitset, computed once per
distinct request, so the best fit is the lowest set bit of ``avail[gpus + leftover] & matching`` for
leftover = 0, 1, ... Machines with mixed GPUs (rare) sit instead in a per-request heap by rank,
refreshed when one of them changes.
Capacity only shrinks within a cycle, so a request that fails once fails for the rest of the cycle.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, insort
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from coop.scheduler.feasibility import GpuShape, NodeShape, gpu_matches, nominal_gb, tier_matches, why_impossible
from coop.scheduler.model import (
    PRIORITY_RANK,
    CycleResult,
    Hold,
    JobView,
    MemberView,
    NodeView,
    Placement,
    Policy,
    RequestKey,
    RunningView,
    fair_share_key,
    member_view,
    request_key,
    service_band,
)
from coop.spec import Resources

EPS = 1e-9
STATES = ("unapproved", "offline", "paused", "reclaim", "draining", "busy")


def node_state(n: NodeView) -> str:
    """Why a node takes no work, in the order a user would care; "busy" when it is schedulable."""
    if not n.approved:
        return "unapproved"
    if not n.online:
        return "offline"
    if n.paused:
        return "paused"
    if n.reclaim:
        return "reclaim"
    return "draining" if n.draining else "busy"


def describe(res: Resources) -> str:
    """'2 GPUs (RTX4090 or A100) of 24 GB+ with compute capability 8.0+, 8 CPUs and 64 GB RAM'."""
    parts = []
    if res.gpus:
        text = f"{res.gpus} GPU{'s' if res.gpus > 1 else ''}"
        if res.gpu:
            text += f" ({' or '.join(res.gpu)})"
        mem = res.gpu_memory
        if mem is not None:
            text += f" of {mem.min_gb:g}..{mem.max_gb:g} GB" if mem.max_gb else f" of {mem.min_gb:g} GB+"
        cc = res.compute_capability
        if cc is not None:
            text += f" with compute capability {cc.min:g}" + (f"..{cc.max:g}" if cc.max else "+")
        parts.append(text)
    if res.cpus > 1 or not res.gpus:
        parts.append(f"{res.cpus} CPU{'s' if res.cpus > 1 else ''}")
    if res.memory_gb:
        parts.append(f"{res.memory_gb:g} GB RAM")
    return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


class NodeClass:
    """Nodes of one static shape. ``buckets[b]``: (speed, id) of schedulable nodes with ``b`` free GPUs,
    fastest first (calibrated TFLOP/s differ between nodes of one shape)."""

    __slots__ = ("key", "pos", "tier", "gpus", "cpus", "memory_gb", "uniform", "nominal", "rep", "states", "nodes",
                 "buckets")  # fmt: skip

    def __init__(self, key: tuple[object, ...], tier: str, gpus: tuple[GpuShape, ...], cpus: int, mem: float) -> None:
        self.key, self.tier, self.gpus, self.cpus, self.memory_gb = key, tier, gpus, cpus, mem
        self.pos = -1
        self.uniform = len(set(gpus)) <= 1  # mixed-GPU machines are rare: scanned node by node
        self.nominal = gpus[0].memory_gb if gpus else 0.0
        self.rep = NodeShape(f"class {key}", tier, cpus, mem, gpus)
        self.states = dict.fromkeys(STATES, 0)
        self.nodes: list[NodeState] = []  # schedulable, by id
        self.buckets: list[list[tuple[float, int]]] = [[] for _ in range(len(gpus) + 1)]

    @property
    def size(self) -> tuple[int, int, float]:
        return (len(self.gpus), self.cpus, self.memory_gb)


class NodeState:
    __slots__ = ("id", "cls", "free", "cpus", "mem", "bucket", "version", "speed")

    def __init__(self, view: NodeView, cls: NodeClass) -> None:
        self.id, self.cls = view.id, cls
        self.speed = -(view.tflops_per_gpu or 0.0)  # lower is faster: sorts with the other best-fit keys
        self.free = sorted(i for i in view.free_gpus if 0 <= i < len(view.gpus))
        self.cpus, self.mem = view.free_cpus, view.free_memory_gb
        self.bucket = 0  # the bucket it sits in; 0 = none
        self.version = 0  # bumped on every change: tells stale heap entries apart

    def rank(self, leftover: int) -> tuple[int, float, tuple[int, int, float], float, int]:
        """Best-fit rank with ``leftover`` free GPUs left: fewest, smallest card, smallest node, fastest card."""
        return (leftover, self.cls.nominal, self.cls.size, self.speed, self.id)


MixedEntry = tuple[tuple[object, ...], int, int, tuple[int, ...]]  # (rank, node id, node version, GPUs)


@dataclass(eq=False)
class Request:
    res: Resources
    matching: list[NodeClass]  # static fit, in any state (for reasons)
    uniform_bits: int = 0  # positions of matching uniform classes
    mixed: list[MixedEntry] = field(default_factory=list)  # heap of mixed-GPU nodes that fit, best first
    indices: dict[int, tuple[int, ...]] = field(default_factory=dict)  # class position -> matching GPUs
    cursor: int = 0  # CPU-only requests: nodes before it can no longer fit
    failed: bool = False


class Capacity:
    """The cycle's working copy of capacity, indexed for best fit."""

    def __init__(self, views: Iterable[NodeView]) -> None:
        by_key: dict[tuple[object, ...], NodeClass] = {}
        self.nodes: dict[int, NodeState] = {}
        self.watch: dict[int, list[Request]] = {}  # mixed class position -> requests whose heap holds it
        for view in sorted(views, key=lambda v: v.id):
            gpus = tuple(GpuShape(g.model, nominal_gb(g.memory_gb), g.compute_capability) for g in view.gpus)
            key = (view.tier, gpus, view.cpus, view.memory_gb)
            cls = by_key.get(key) or by_key.setdefault(key, NodeClass(key, view.tier, gpus, view.cpus, view.memory_gb))
            state = "busy" if view.schedulable else node_state(view)
            cls.states[state] += 1
            if state == "busy":
                node = self.nodes[view.id] = NodeState(view, cls)
                cls.nodes.append(node)
        # best-fit order: smallest card, then smallest node; _group_end marks runs of equal rank
        rank = {k: (c.nominal, c.size) for k, c in by_key.items()}
        self.classes = sorted(by_key.values(), key=lambda c: (rank[c.key], repr(c.key)))
        self.group_end: list[int] = []
        for p, cls in enumerate(self.classes):
            cls.pos = p
        for p, cls in enumerate(self.classes):
            end = p
            while end + 1 < len(self.classes) and rank[self.classes[end + 1].key] == rank[cls.key]:
                end += 1
            self.group_end.append(end)
        self.avail = [0] * (max((len(c.gpus) for c in self.classes), default=0) + 1)
        for node in self.nodes.values():
            self._file(node)
        self.cpu_order = sorted(self.nodes.values(), key=lambda n: (n.cls.size, n.id))
        self.gpu_memo: dict[tuple[RequestKey, GpuShape], bool] = {}

    # --- bucket upkeep ---------------------------------------------------------------------------

    def _file(self, node: NodeState) -> None:
        """Put a node in the bucket of its free-GPU count (none when it has no GPU or CPU left)."""
        cls = node.cls
        if not cls.uniform:
            node.version += 1
            for req in self.watch.get(cls.pos, ()):
                self._push_mixed(req, node)
            return
        if node.bucket:
            bucket = cls.buckets[node.bucket]
            del bucket[bisect_left(bucket, (node.speed, node.id))]
            if not bucket:
                self.avail[node.bucket] &= ~(1 << cls.pos)
        node.bucket = len(node.free) if node.cpus > 0 else 0
        if node.bucket:
            insort(cls.buckets[node.bucket], (node.speed, node.id))
            self.avail[node.bucket] |= 1 << cls.pos

    def take(self, node: NodeState, res: Resources, indices: tuple[int, ...]) -> None:
        node.free = [i for i in node.free if i not in indices]
        node.cpus -= res.cpus
        node.mem -= res.memory_gb or 0.0
        self._file(node)

    def withhold(self, node: NodeState, indices: Iterable[int]) -> None:
        """Keep GPUs free but out of reach for the rest of the cycle (a hold)."""
        kept = set(indices)
        node.free = [i for i in node.free if i not in kept]
        self._file(node)

    def give(self, node: NodeState, indices: Iterable[int], cpus: int, mem: float) -> None:
        """Return what a stopped job held (preemption planning). Capacity grows here, so a CPU-only
        request's cursor from before must not be reused after it."""
        node.free = sorted(set(node.free).union(indices))
        node.cpus += cpus
        node.mem += mem
        self._file(node)

    # --- requests --------------------------------------------------------------------------------

    def request(self, res: Resources, key: RequestKey) -> Request:
        """Which classes could ever hold ``res``: ``fits`` per class, with ``gpu_matches`` memoised."""
        matches: dict[GpuShape, bool] = {}
        for cls in self.classes:
            for gpu in cls.gpus:
                if gpu not in matches:
                    memo_key = (key, gpu)
                    if memo_key not in self.gpu_memo:
                        self.gpu_memo[memo_key] = gpu_matches(res, gpu)
                    matches[gpu] = self.gpu_memo[memo_key]
        req = Request(res, [])
        for cls in self.classes:
            if not tier_matches(res, cls.rep) or cls.cpus < res.cpus or cls.memory_gb + EPS < (res.memory_gb or 0):
                continue
            idx = tuple(i for i, g in enumerate(cls.gpus) if matches[g])
            if len(idx) < res.gpus:
                continue
            req.matching.append(cls)
            req.indices[cls.pos] = idx
            if res.gpus and cls.uniform:
                req.uniform_bits |= 1 << cls.pos
            elif res.gpus:
                self.watch.setdefault(cls.pos, []).append(req)
                for node in cls.nodes:
                    self._push_mixed(req, node)
        return req

    def _push_mixed(self, req: Request, node: NodeState) -> None:
        """Rank a mixed-GPU node for ``req`` as it is now: its smallest matching free cards."""
        res = req.res
        if node.cpus < res.cpus or node.mem + EPS < (res.memory_gb or 0):
            return
        cls = node.cls
        free = sorted((cls.gpus[i].memory_gb, i) for i in req.indices[cls.pos] if i in node.free)
        if len(free) < res.gpus:
            return
        chosen = free[: res.gpus]
        rank = (len(free) - res.gpus, sum(m for m, _ in chosen) / res.gpus, cls.size, node.speed, node.id)
        heapq.heappush(req.mixed, (rank, node.id, node.version, tuple(sorted(i for _, i in chosen))))

    def find(self, req: Request) -> tuple[NodeState, tuple[int, ...]] | None:
        """Best fit: fewest matching free GPUs left over, smallest card, smallest node, then the fastest
        card (the job ends sooner and frees it sooner), lowest id."""
        res = req.res
        if not res.gpus:
            return self._find_cpu(req)
        best = self._find_uniform(req)
        heap = req.mixed
        while heap and self.nodes[heap[0][1]].version != heap[0][2]:
            heapq.heappop(heap)  # the node changed since: a fresh entry was pushed then
        if heap and (best is None or heap[0][0] < best[0]):
            rank, node_id, _, indices = heap[0]
            best = (rank, self.nodes[node_id], indices)
        return None if best is None else (best[1], best[2])

    def fit_on(self, node_id: int, req: Request) -> tuple[NodeState, tuple[int, ...]] | None:
        """``req`` on one given node (its smallest matching free cards), or None if it does not fit now."""
        node = self.nodes.get(node_id)
        match = None if node is None else req.indices.get(node.cls.pos)
        res = req.res
        if node is None or match is None or node.cpus < res.cpus or node.mem + EPS < (res.memory_gb or 0.0):
            return None
        free = sorted((i for i in match if i in node.free), key=lambda i: (node.cls.gpus[i].memory_gb, i))
        if len(free) < res.gpus:
            return None
        return node, tuple(sorted(free[: res.gpus]))

    def _find_uniform(self, req: Request) -> tuple[tuple[object, ...], NodeState, tuple[int, ...]] | None:
        g, cpus, mem = req.res.gpus, req.res.cpus, (req.res.memory_gb or 0.0) - EPS
        for b in range(g, len(self.avail)):
            bits = self.avail[b] & req.uniform_bits
            found: NodeState | None = None
            group_end = -1
            while bits:
                low = bits & -bits
                p = low.bit_length() - 1
                if found is not None and p > group_end:
                    break  # classes past the tie group rank worse
                cls = self.classes[p]
                for _, node_id in cls.buckets[b]:
                    node = self.nodes[node_id]
                    if node.cpus >= cpus and node.mem >= mem:
                        if found is None or (node.speed, node.id) < (found.speed, found.id):
                            found, group_end = node, self.group_end[p]
                        break
                bits ^= low
            if found is not None:
                return found.rank(b - g), found, tuple(found.free[:g])
        return None

    def _find_cpu(self, req: Request) -> tuple[NodeState, tuple[int, ...]] | None:
        """CPU-only: the first node, fewest GPUs then smallest, with room. Nodes skipped never fit again."""
        cpus, mem = req.res.cpus, (req.res.memory_gb or 0.0) - EPS
        order = self.cpu_order
        while req.cursor < len(order):
            node = order[req.cursor]
            if node.cls.pos in req.indices and node.cpus >= cpus and node.mem >= mem:
                return node, ()
            req.cursor += 1
        return None

    # --- reasons ---------------------------------------------------------------------------------

    def reason(self, req: Request) -> str:
        if not req.matching:
            if not self.classes:
                return "waiting: no node is registered yet"
            refusal = why_impossible(req.res, [c.rep for c in self.classes])
            return f"waiting: {refusal.message if refusal else 'no node meets all of these requirements together'}"
        return f"waiting: no node has {describe(req.res)} free; " + self.breakdown(req)

    def breakdown(self, req: Request) -> str:
        """'2 nodes match but are busy; 1 matching node is paused': the matching nodes by state."""
        counts = dict.fromkeys(STATES, 0)
        for cls in req.matching:
            for state, n in cls.states.items():
                counts[state] += n
        parts = []
        if counts["busy"]:
            parts.append(_plural(counts["busy"], "node matches but is busy", "nodes match but are busy"))
        if counts["paused"]:
            parts.append(_plural(counts["paused"], "matching node is paused",
                                 "matching nodes are paused"))  # fmt: skip
        if counts["reclaim"]:
            parts.append(_plural(counts["reclaim"], "matching node is in use by its owner",
                                 "matching nodes are in use by their owners"))  # fmt: skip
        if counts["draining"]:
            parts.append(_plural(counts["draining"], "matching node is draining", "matching nodes are draining"))
        if counts["offline"]:
            parts.append(_plural(counts["offline"], "matching node is offline", "matching nodes are offline"))
        if counts["unapproved"]:
            awaiting = _plural(counts["unapproved"], "matching node awaits", "matching nodes await")
            parts.append(f"{awaiting} an admin's approval (coop admin node approve ID)")
        return "; ".join(parts)


def gang_reason(pool: Capacity, req: Request) -> str:
    """Why a gang waits: how many nodes it needs at once, how many have room now, and the rest."""
    n = req.res.nodes
    room = sum(1 for node_id in pool.nodes if pool.fit_on(node_id, req))
    now = f"{room} {'has' if room == 1 else 'have'} room now" if room else "none has room now"
    return (
        f"waiting: needs {n} nodes with {describe(req.res)} each, free at once (started all together or "
        f"not at all); {now}; " + pool.breakdown(req)
    )


Fit = tuple[NodeState, tuple[int, ...]]


def _gang(
    pool: Capacity, req: Request, views: Mapping[int, NodeView], member_id: int, among: Iterable[int] | None = None
) -> list[Fit] | None:
    """``req.res.nodes`` nodes that each fit now, kept close, or None: the member's own nodes of one
    tier and network first (they cost it nothing and share a network), then an HPC pool's node class
    with enough machines (Slurm places the whole gang), then nodes of one network and tier, of one
    tier, then any. Within a group, the best fits (as ``find``); among groups, the fewest GPUs left
    over. A gang never mixes a pool with donated nodes."""
    n = req.res.nodes
    fits = [f for node_id in (pool.nodes if among is None else among) if (f := pool.fit_on(node_id, req))]

    def rank(f: Fit) -> tuple[object, ...]:
        return f[0].rank(len(f[0].free) - len(f[1]))

    loose = sorted((f for f in fits if views[f[0].id].pool_id is None), key=rank)
    whole = [f for f in fits if views[f[0].id].pool_id is not None and views[f[0].id].machines >= n]
    levels: list[Callable[[NodeView], tuple[object, ...]] | None] = [
        lambda v: (v.member_id, v.tier, v.network),
        None,  # a pool's node class
        lambda v: (v.tier, v.network),
        lambda v: (v.tier,),
        lambda v: (),
    ]
    for level in levels:
        if level is None:
            if whole:
                return [min(whole, key=rank)]
            continue
        groups: dict[tuple[object, ...], list[Fit]] = {}
        for f in loose:
            groups.setdefault(level(views[f[0].id]), []).append(f)
        enough = [g[:n] for g in groups.values() if len(g) >= n]
        if enough:
            return min(
                enough,
                key=lambda g: (views[g[0][0].id].member_id != member_id, sum(len(f[0].free) - len(f[1]) for f in g),
                               [f[0].id for f in g]),
            )  # fmt: skip
    return None


def _cap_reason(member: MemberView, held: int, gpus: int) -> str:
    cap = member.gpu_cap
    if gpus > (cap or 0):
        return f"waiting: the job needs {gpus} GPU{'s' if gpus > 1 else ''} but its member's GPU cap is {cap}"
    need = f", this job needs {gpus}" if held < (cap or 0) else ""
    return f"waiting: member at its GPU cap ({held} of {cap} in use{need})"


def job_order(job: JobView, levels: tuple[float, ...] = ()) -> tuple[int, int, float, float, int]:
    """A member's own queue: priority, then the fewest service ``levels`` passed (least attained
    service: a new job before one that already ran for hours, so short jobs finish first without
    anyone declaring lengths), then the shortest declared ``max_runtime`` (none: last), then age. It
    only reorders the member's own jobs, so a short declared limit gains nothing against other
    members, and a job past it fails."""
    limit = job.max_runtime_s if job.max_runtime_s is not None else math.inf
    band = service_band(job.attained_gpu_s, levels) if levels else 0
    return (PRIORITY_RANK.get(job.priority, 1), band, limit, job.submitted_at, job.id)


def fifo_order(job: JobView) -> tuple[float, int]:
    return (job.submitted_at, job.id)


def queue_order(policy: Policy) -> Callable[[JobView], tuple[float | int, ...]]:
    """The order in which one member's waiting jobs go under ``policy``."""
    if not policy.fair_share:
        return fifo_order
    levels = policy.service_levels_gpu_h
    return lambda job: job_order(job, levels)


def _ordered(
    jobs: list[JobView], members: dict[int, MemberView], placed: dict[int, int], policy: Policy
) -> Iterator[JobView]:
    """Yield jobs in scheduling order. With fair share the member with the lowest
    (usage + held GPUs x running_weight_hours) / share goes next, recomputed after every job, so
    members interleave within one cycle; ``placed`` is read live. Equal priority: the member whose
    next job has passed fewer service levels goes first, then the one with the higher credit balance.
    Each member's own jobs go in ``queue_order``."""
    if not policy.fair_share:
        yield from sorted(jobs, key=fifo_order)
        return
    order = queue_order(policy)
    queues: dict[int, list[JobView]] = {}
    for job in jobs:
        queues.setdefault(job.member_id, []).append(job)
    for queue in queues.values():
        queue.sort(key=order, reverse=True)  # pop() from the end

    def priority(mid: int) -> float:
        m = member_view(members, mid)
        return fair_share_key(
            m.usage_gpu_hours, m.gpus_in_use + placed.get(mid, 0), m.share, policy.running_weight_hours
        )

    def key(mid: int) -> tuple[float, int, float, int]:
        head = order(queues[mid][-1])[1]  # the band of its next job
        return (priority(mid), int(head), -member_view(members, mid).balance, mid)

    heap = [key(mid) for mid in queues]
    heapq.heapify(heap)
    while heap:
        *_, mid = heapq.heappop(heap)
        queue = queues[mid]
        yield queue.pop()
        if queue:
            heapq.heappush(heap, key(mid))


def expected_end(r: RunningView, now: float, least_s: float = 0.0) -> float:
    """When a running attempt is expected to end, without knowing its length: it has as long to go as
    it has run (a job that ran long tends to run long), at least ``least_s``, capped by its declared
    limit; now if it is stopping."""
    if r.stopping:
        return now
    guess = now + max(least_s, now - r.started_at)
    return min(guess, r.started_at + r.max_runtime_s) if r.max_runtime_s is not None else guess


def _hold_node(
    pool: Capacity,
    req: Request,
    by_node: Mapping[int, list[RunningView]],
    now: float,
    least_s: float,
    previous: int | None,
    among: Collection[int],
) -> tuple[NodeState, float] | None:
    """The node of ``among`` a wide job holds: the one it held before while it can still hold the job,
    else the one where running jobs free enough GPUs soonest by ``expected_end`` (then the lowest id)."""
    best: tuple[float, int] | None = None
    for node_id in among:
        node = pool.nodes[node_id]
        match = req.indices.get(node.cls.pos)
        if match is None or len(match) < req.res.gpus:
            continue
        free = sum(i in node.free for i in match)
        ends = sorted(
            (expected_end(r, now, least_s), sum(i in match for i in r.gpu_indices) if r.gpu_indices else r.gpus)
            for r in by_node.get(node.id, ())
        )
        until = now
        for end, gpus in ends:
            if free >= req.res.gpus:
                break
            free += gpus
            until = end
        if free < req.res.gpus:
            continue
        if node.id == previous:
            return node, until
        if best is None or (until, node.id) < best:
            best = (until, node.id)
    return None if best is None else (pool.nodes[best[1]], best[0])


def place(
    jobs: list[JobView],
    nodes: list[NodeView],
    members: list[MemberView],
    policy: Policy,
    now: float,
    reserved: Mapping[int, int] | None = None,
    running: Iterable[RunningView] = (),
    holds: Mapping[int, int] | None = None,
) -> CycleResult:
    """Place as many pending jobs as fit, in fair-share (or FIFO) order, best fit first.

    First, each job in ``reserved`` (job id -> node) takes the room a preemption made for it there, if
    it fits now. Owner first: with fair share, a donor's waiting jobs take free room on its own nodes
    before the ordered pass (they cost it nothing there); ``preemptions`` makes that room when guests
    hold it.
    A job that cannot go does not block the ones behind it (backfill); each gets a reason. But a job
    of 2+ GPUs that waited ``policy.wide_hold_after_s`` (each member's longest-waiting one, so holds
    keep few GPUs idle) and fits none of its member's nodes now holds the free GPUs of the member's
    node that frees soonest for it (``running`` tells which; ``holds``,
    job id -> node, are the last cycle's: a job keeps its node while it can), so that narrower jobs
    cannot starve it; only jobs whose declared ``max_runtime`` ends before that node is expected to
    free, and the member's own preemptible jobs (``preemptions`` stops them when that lets the wide
    job start), may use the held GPUs.
    """
    pool = Capacity(nodes)
    by_id = {m.id: m for m in members}
    placed: dict[int, int] = {}
    result = CycleResult()
    requests: dict[RequestKey, Request] = {}
    stuck: list[tuple[JobView, Request]] = []
    order = queue_order(policy)
    by_node: dict[int, list[RunningView]] = {}
    for r in running:
        by_node.setdefault(r.node_id, []).append(r)
    held: dict[int, tuple[Hold, tuple[int, ...]]] = {}  # node id -> hold and the free GPUs it keeps
    oldest: dict[int, JobView] = {}  # per member, its longest-waiting wide job: the one that may hold a node
    for j in jobs:  # a gang waits for free room on enough nodes instead (``_gang``)
        waited = j.resources.gpus > 1 and j.resources.nodes == 1 and now - j.submitted_at >= policy.wide_hold_after_s
        if waited and (j.member_id not in oldest or fifo_order(j) < fifo_order(oldest[j.member_id])):
            oldest[j.member_id] = j

    def over_cap(job: JobView) -> str | None:
        member = member_view(by_id, job.member_id)
        held, gpus = member.gpus_in_use + placed.get(job.member_id, 0), job.resources.total_gpus
        if gpus and member.gpu_cap is not None and held + gpus > member.gpu_cap:
            return _cap_reason(member, held, gpus)
        return None

    def request(res: Resources) -> Request:
        key = request_key(res)
        req = requests.get(key)
        if req is None:
            req = requests[key] = pool.request(res, key)
            req.failed = not req.matching
        return req

    def start(job: JobView, node: NodeState, indices: tuple[int, ...]) -> None:
        pool.take(node, job.resources, indices)
        placed[job.member_id] = placed.get(job.member_id, 0) + job.resources.gpus
        result.placements.append(Placement(job.id, node.id, indices))
        view = RunningView(job.id, job.member_id, node.id, len(indices), job.preemptible, now, indices,
                           max_runtime_s=job.max_runtime_s, submitted_at=job.submitted_at)  # fmt: skip
        by_node.setdefault(node.id, []).append(view)  # a wide job's hold counts on it ending too

    def start_gang(job: JobView, fits: list[Fit]) -> None:
        """Every rank at once: each node's room is taken, and the gang is one placement."""
        for node, indices in fits:
            pool.take(node, job.resources, indices)
        placed[job.member_id] = placed.get(job.member_id, 0) + job.resources.total_gpus
        (first, first_gpus), *rest = fits
        result.placements.append(Placement(job.id, first.id, first_gpus, tuple((n.id, i) for n, i in rest)))
        for node, indices in fits:
            view = RunningView(job.id, job.member_id, node.id, len(indices), job.preemptible, now, indices,
                               max_runtime_s=job.max_runtime_s, submitted_at=job.submitted_at,
                               nodes=job.resources.nodes)  # fmt: skip
            by_node.setdefault(node.id, []).append(view)

    def hold(job: JobView, req: Request) -> None:
        """Keep the free GPUs of the node that frees soonest for ``job`` (a wide job that waited long)."""
        if oldest.get(job.member_id) is not job or not req.matching or over_cap(job) is not None:
            return
        mine = [n for n in own.get(job.member_id, ()) if n not in held and n in pool.nodes]
        found = _hold_node(pool, req, by_node, now, policy.min_runtime_s, (holds or {}).get(job.id), mine)
        if found is None:
            return
        node, until = found
        keep = tuple(i for i in node.free if i in req.indices[node.cls.pos])
        pool.withhold(node, keep)
        held[node.id] = (Hold(job.id, node.id, until, job.member_id), keep)
        result.holds.append(held[node.id][0])
        hours = max(0.0, until - now) / 3600
        result.waiting[job.id] = (
            f"waiting: holds {describe(job.resources)} on node {names[node.id]} after waiting "
            f"{(now - job.submitted_at) / 3600:.1f} h; its jobs should free them in about {hours:.1f} h"
        )

    own: dict[int, list[int]] = {}  # each donor's schedulable nodes
    names = {view.id: view.name for view in nodes}
    views = {view.id: view for view in nodes}
    for view in nodes:
        if view.schedulable:
            own.setdefault(view.member_id, []).append(view.id)
    started: set[int] = set()
    for job in sorted((j for j in jobs if reserved and j.id in reserved and j.resources.nodes == 1), key=order):
        fit = pool.fit_on(reserved[job.id], request(job.resources)) if reserved else None
        if fit is not None and over_cap(job) is None:
            start(job, *fit)
            started.add(job.id)
    # starvation guard: each member's longest-waiting wide job that fits none of its own nodes now holds
    # the one that frees soonest (its own, so owner first stands: a guest never holds a donor's node),
    # before the owner's newer jobs can take the room
    for job in sorted((j for j in oldest.values() if j.id not in started), key=fifo_order):
        req = request(job.resources)
        fits = [f for node_id in own.get(job.member_id, ()) if (f := pool.fit_on(node_id, req))]
        if not fits:
            hold(job, req)
    if policy.fair_share:  # owner first: a donor's jobs go on its own free nodes before anyone's turn
        no_room: set[tuple[int, int]] = set()  # (member, request) with no room on its nodes: stays so
        for job in sorted((j for j in jobs if j.member_id in own and j.id not in started), key=order):
            req = request(job.resources)
            if (job.member_id, id(req)) in no_room:
                continue
            if job.resources.nodes > 1:
                gang = _gang(pool, req, views, job.member_id, own[job.member_id])
                if gang is None:
                    no_room.add((job.member_id, id(req)))
                elif over_cap(job) is None:
                    start_gang(job, gang)
                    started.add(job.id)
                continue
            fits = [f for node_id in own[job.member_id] if (f := pool.fit_on(node_id, req))]
            if not fits:
                no_room.add((job.member_id, id(req)))
            elif over_cap(job) is None:
                node, indices = min(fits, key=lambda f: f[0].rank(len(f[0].free) - len(f[1])))  # as ``find``
                start(job, node, indices)
                started.add(job.id)
    for job in _ordered([j for j in jobs if j.id not in started], by_id, placed, policy):
        cap = over_cap(job)
        if cap is not None:
            result.waiting[job.id] = cap
            continue
        req = request(job.resources)
        if job.resources.nodes > 1:
            gang = None if req.failed else _gang(pool, req, views, job.member_id)
            if gang is None:
                req.failed = True
                stuck.append((job, req))
            else:
                start_gang(job, gang)
            continue
        if held and job.max_runtime_s is not None and _onto_holds(pool, held, job, req, now, start):
            continue  # it ends before a held node frees: held GPUs first, the rest stay for others
        fit = None if req.failed else pool.find(req)
        if fit is None and held and job.preemptible and _onto_holds(pool, held, job, req, now, start):
            continue  # it makes way when the wide job can start
        if fit is None:
            req.failed = True
            stuck.append((job, req))
            continue
        start(job, *fit)
    reasons: dict[int, str] = {}  # by id(request): one reason per distinct request
    for job, req in stuck:
        if job.id in result.waiting:
            continue
        if id(req) not in reasons:
            reasons[id(req)] = gang_reason(pool, req) if req.res.nodes > 1 and req.matching else pool.reason(req)
        result.waiting[job.id] = reasons[id(req)]
    return result


def _onto_holds(
    pool: Capacity,
    held: dict[int, tuple[Hold, tuple[int, ...]]],
    job: JobView,
    req: Request,
    now: float,
    start: Callable[[JobView, NodeState, tuple[int, ...]], None],
) -> bool:
    """Start ``job`` on held GPUs if its declared ``max_runtime`` ends before a hold's ``until``, or if
    it is a preemptible job of the wide job's member (stopped, in its first run, once that lets the
    wide job start: the member trades its own newer jobs' time, never another member's)."""
    for node_id, (h, keep) in held.items():
        ends_before = job.max_runtime_s is not None and now + job.max_runtime_s <= h.until
        mine = job.preemptible and job.member_id == h.member_id
        if not (ends_before or mine):
            continue
        node = pool.nodes[node_id]
        others, node.free = node.free, sorted(keep)  # only the held GPUs are open to it
        fit = pool.fit_on(node_id, req)
        node.free = others
        if fit is not None:
            held[node_id] = (h, tuple(i for i in keep if i not in fit[1]))
            start(job, *fit)
            return True
    return False
