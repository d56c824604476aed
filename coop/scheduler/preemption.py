"""Which running jobs to stop this cycle: owner first (its reclaim flag, then its own waiting jobs),
then reclaim by balance, then least attained service (a job that ran long makes way for one that has
barely run, where fair share allows it).

Pure: plans on a copy of capacity (the same index ``place`` uses) and returns decisions only.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Mapping, Sequence
from itertools import combinations

from coop.scheduler.model import (
    PRIORITY_RANK,
    JobView,
    MemberView,
    NodeView,
    Policy,
    Preemption,
    RequestKey,
    RunningView,
    fair_share_key,
    member_view,
    request_key,
    service_band,
)
from coop.scheduler.placement import Capacity, NodeState, Request, queue_order
from coop.spec import Resources

VictimRank = tuple[float, float, int]
SERVICE_MARK = "least attained service first"  # ends a service preemption's reason: the live cycle counts them by it
MAX_VICTIMS_PER_NODE = 12  # subsets of the 12 most preferred victims on a node are plenty (and bounded)


def _owner_reason(node: NodeView) -> str:
    why = f" ({node.reclaim_reason})" if node.reclaim_reason else ""
    return f"preempted: node {node.name} is reclaimed by its owner{why}"


def preemptions(
    running: list[RunningView],
    pending: list[JobView],
    nodes: list[NodeView],
    members: list[MemberView],
    policy: Policy,
    now: float,
    held: Mapping[int, int] | None = None,
) -> list[Preemption]:
    """Owner preemptions (every guest on a node whose owner wants it back; with fair share, what stands
    in the way of a wide job on the node it holds (``held``: node -> job), then the guests in the way
    of the owner's own waiting jobs), then balance reclaims, then service preemptions (not on a held
    node, except for its job)."""
    by_node = {n.id: n for n in nodes}
    pending = [j for j in pending if j.resources.nodes == 1]  # a gang waits for free room: stopping
    # jobs on several nodes at once for it would cost more than it gains
    out: list[Preemption] = []
    for r in sorted(running, key=lambda r: (r.node_id, r.job_id)):
        node = by_node.get(r.node_id)
        if node is not None and node.reclaim and r.member_id != node.member_id:
            out.append(Preemption(r.job_id, r.node_id, _owner_reason(node), "owner"))
    taken = {p.job_id for p in out}
    if policy.fair_share and held:
        wide = _wide_first(running, pending, nodes, members, held, now, taken)
        out += wide
        taken |= {p.job_id for p in wide}
        pending = [j for j in pending if j.id not in {p.for_job_id for p in wide}]
    if policy.fair_share:
        first, served = _owner_first(running, pending, nodes, members, policy, taken)
        out += first
        taken |= {p.job_id for p in first}
        pending = [j for j in pending if j.id not in served]
    reclaims = _Reclaim(running, pending, nodes, members, policy, now, taken).plan()
    out += reclaims
    if policy.fair_share and policy.service_preemption and policy.service_levels_gpu_h:
        taken |= {p.job_id for p in reclaims}
        served = {p.for_job_id for p in reclaims if p.for_job_id is not None}
        pending = [j for j in pending if j.id not in served]
        singles = [r for r in running if r.nodes == 1]  # a gang makes way only for owners and balances
        out += _Service(singles, pending, nodes, members, policy, now, taken, held or {}).plan()
    once: dict[int, Preemption] = {}  # a gang's ranks on several reclaimed nodes: one stop stops it all
    for p in out:
        once.setdefault(p.job_id, p)
    return list(once.values())


def _wide_first(
    running: list[RunningView],
    pending: list[JobView],
    nodes: list[NodeView],
    members: list[MemberView],
    held: Mapping[int, int],
    now: float,
    taken: set[int],
) -> list[Preemption]:
    """A wide job that holds a node of its member (``placement.place`` decides holds) gets it as soon as
    stopping what runs there would make room: guests whatever their kind (as owner first) and the
    member's own preemptible jobs submitted after it in their first run (those that took the held
    GPUs meanwhile among them; so a job of the member makes way for a hold once at most), already
    stopping first, then the least work lost."""
    jobs = {j.id: j for j in pending}
    views = {n.id: n for n in nodes}
    wanted = [(node_id, jobs[job_id]) for node_id, job_id in sorted(held.items()) if job_id in jobs]
    if not wanted:
        return []
    by_member = {m.id: m for m in members}
    capacity = Capacity(nodes)
    out: list[Preemption] = []
    for node_id, job in wanted:
        view, node = views.get(node_id), capacity.nodes.get(node_id)
        req = capacity.request(job.resources, request_key(job.resources))
        if view is None or node is None or node.cls.pos not in req.indices or capacity.fit_on(node_id, req):
            continue  # gone, or it fits now: placement starts it
        victims = sorted(
            (r for r in running if r.node_id == node_id and r.job_id not in taken
             and (r.member_id != view.member_id
                  or (r.preemptible and r.submitted_at > job.submitted_at and not r.attained_gpu_s))),
            key=lambda r: (not r.stopping, r.loss(now), -r.started_at, r.job_id),
        )  # fmt: skip
        chosen = _guests_in_the_way(node, req, victims)
        if chosen is None:
            continue
        indices = _gpus(node, chosen, req)
        if indices is None:
            continue
        _hand_over(capacity, node, chosen, job.resources, indices)
        member = member_view(by_member, job.member_id)
        waited = (now - job.submitted_at) / 3600
        reason = (
            f"preempted: {member.label}'s job {job.id} waited {waited:.1f} h for {job.resources.gpus} GPUs "
            f"and takes its own node {view.name}"
        )
        for v in chosen:
            taken.add(v.job_id)
            if not v.stopping:
                out.append(Preemption(v.job_id, node_id, reason, "owner", for_job_id=job.id))
    return out


def _owner_first(
    running: list[RunningView],
    pending: list[JobView],
    nodes: list[NodeView],
    members: list[MemberView],
    policy: Policy,
    taken: set[int],
) -> tuple[list[Preemption], set[int]]:
    """A donor's waiting job that fits nowhere now takes room on its own node from guests, at once and
    whatever their kind: lending a machine means giving it back when the owner needs it. Fewest new
    victims: guests already stopping first, then preemptible ones, then the youngest. Returns the
    preemptions and the ids of the waiting jobs they make room for."""
    own = _own_nodes(nodes)
    jobs = sorted((j for j in pending if j.member_id in own), key=queue_order(policy))
    guests = _guests(running, nodes, taken)
    if not any(n.id in guests for mid in {j.member_id for j in jobs} for n in own[mid]):
        return [], set()  # no waiting donor has a guest on its nodes: nobody to stop
    by_member = {m.id: m for m in members}
    capacity = Capacity(nodes)
    requests: dict[RequestKey, Request] = {}
    extra: dict[int, int] = {}
    out: list[Preemption] = []
    served: set[int] = set()
    for job in jobs:
        member = member_view(by_member, job.member_id)
        if _over_cap(member, extra, job.resources):
            continue
        req = _needs_room(capacity, requests, job.resources, request_key(job.resources))
        choice = None if req is None else _owner_node(capacity, req, own[job.member_id], guests)
        if choice is None:
            continue
        node, victims, indices = choice
        for v in victims:
            guests[node.id].remove(v)
        _hand_over(capacity, node, victims, job.resources, indices)
        extra[member.id] = extra.get(member.id, 0) + job.resources.gpus
        out += _owner_stops(job, member, own[job.member_id], node, victims)
        served.add(job.id)
    return out, served


def _own_nodes(nodes: list[NodeView]) -> dict[int, list[NodeView]]:
    """Each donor's schedulable nodes: the only ones owner first takes room on."""
    own: dict[int, list[NodeView]] = {}
    for n in nodes:
        if n.schedulable:
            own.setdefault(n.member_id, []).append(n)
    return own


def _guests(running: list[RunningView], nodes: list[NodeView], taken: set[int]) -> dict[int, list[RunningView]]:
    """Per node, the guest jobs not already being stopped this cycle, the ones to stop first first:
    already stopping, then preemptible, then the youngest."""
    guests: dict[int, list[RunningView]] = {}
    owner_of = {n.id: n.member_id for n in nodes}
    for r in running:
        if r.job_id not in taken and owner_of.get(r.node_id, r.member_id) != r.member_id:
            guests.setdefault(r.node_id, []).append(r)
    for vs in guests.values():
        vs.sort(key=lambda r: (not r.stopping, not r.preemptible, -r.started_at, r.job_id))
    return guests


def _owner_node(
    capacity: Capacity, req: Request, own: list[NodeView], guests: dict[int, list[RunningView]]
) -> tuple[NodeState, list[RunningView], tuple[int, ...]] | None:
    """The donor's node to make room on, the guests to stop there and the GPUs the job gets: fewest new
    stops, then the smallest node that fits (keep the big ones whole for wide jobs)."""
    best: tuple[tuple[int, int, int, int], NodeState, list[RunningView]] | None = None
    for view in own:
        node = capacity.nodes.get(view.id)
        if node is None or node.cls.pos not in req.indices:
            continue
        chosen = _guests_in_the_way(node, req, guests.get(view.id, []))
        if chosen is None:
            continue
        cost = (sum(not v.stopping for v in chosen), len(chosen), len(view.gpus), view.id)
        if best is None or cost < best[0]:
            best = (cost, node, chosen)
    if best is None:
        return None
    _, node, victims = best
    indices = _gpus(node, victims, req)
    return None if indices is None else (node, victims, indices)


def _guests_in_the_way(node: NodeState, req: Request, guests: list[RunningView]) -> list[RunningView] | None:
    """The fewest of ``guests`` (most preferred first) whose stop makes room for ``req`` on ``node``, or
    None if stopping them all would not."""
    chosen: list[RunningView] = []
    for v in guests:
        if _room(node, req, chosen):
            break
        chosen.append(v)
    if not _room(node, req, chosen):
        return None
    for v in reversed(list(chosen)):  # drop whoever is not needed after all
        rest = [c for c in chosen if c is not v]
        if _room(node, req, rest):
            chosen = rest
    return chosen


def _owner_stops(
    job: JobView, member: MemberView, own: list[NodeView], node: NodeState, victims: list[RunningView]
) -> list[Preemption]:
    """The preemptions that make room for the donor's ``job`` on ``node`` (guests already stopping
    need none)."""
    node_name = next(n.name for n in own if n.id == node.id)
    reason = f"preempted: {member.label} needs its own node {node_name} for its job {job.id}"
    return [Preemption(v.job_id, node.id, reason, "owner", for_job_id=job.id) for v in victims if not v.stopping]


def _over_cap(member: MemberView, extra: dict[int, int], res: Resources) -> bool:
    """Would the job take its member past its GPU cap, counting the GPUs this call already made room
    for (``extra``)? Then stopping others would not let it run."""
    held = member.gpus_in_use + extra.get(member.id, 0)
    return member.gpu_cap is not None and held + res.gpus > member.gpu_cap


def _needs_room(
    capacity: Capacity, requests: dict[RequestKey, Request], res: Resources, key: RequestKey
) -> Request | None:
    """The job's request when stopping others could help: some node could hold it, but none can now
    (a job that fits now is left to placement)."""
    req = requests.get(key) or requests.setdefault(key, capacity.request(res, key))
    return req if req.matching and capacity.find(req) is None else None


def _hand_over(
    capacity: Capacity, node: NodeState, victims: Sequence[RunningView], res: Resources, indices: tuple[int, ...]
) -> None:
    """Plan the victims' stop and hold the room for the job while planning the next."""
    for v in victims:
        capacity.give(node, v.gpu_indices, v.cpus, v.memory_gb)
    capacity.take(node, res, indices)


class _Reclaim:
    """A waiting job of a member in credit takes GPUs from preemptible jobs of members in debt.

    Candidates go richest member first (then job priority, then age). Each one either fits now (it
    will simply be placed), or gets the smallest set of victims on one node that makes it fit, or
    nothing. Victims: balance < 0, preemptible, run >= min_runtime_s, not the owner on its own node.
    Only jobs that need GPUs reclaim: GPUs are what the ledger charges for and what members queue on.
    """

    def __init__(
        self,
        running: list[RunningView],
        pending: list[JobView],
        nodes: list[NodeView],
        members: list[MemberView],
        policy: Policy,
        now: float,
        taken: set[int],
    ) -> None:
        self.members = {m.id: m for m in members}
        self.policy, self.now = policy, now
        self.nodes = {n.id: n for n in nodes}
        self.candidates = sorted(
            (
                j
                for j in pending
                if j.resources.gpus
                and self._member(j.member_id).balance > 0
                and now - j.submitted_at > policy.reclaim_wait_s
            ),
            key=lambda j: (-self._member(j.member_id).balance, PRIORITY_RANK.get(j.priority, 1), j.submitted_at, j.id),
        )
        self.victims: dict[int, list[RunningView]] = {}  # node id -> eligible victims, most preferred first
        for r in running:
            node = self.nodes.get(r.node_id)
            if (
                r.job_id not in taken
                and r.preemptible
                and node is not None
                and node.schedulable
                and r.member_id != node.member_id
                and self._member(r.member_id).balance < 0
                and now - r.started_at >= policy.min_runtime_s
            ):
                self.victims.setdefault(r.node_id, []).append(r)
        self.order: dict[int, list[tuple[VictimRank, int]]] = {}  # filled by plan()
        self.rank = {r.job_id: self._victim_rank(r) for vs in self.victims.values() for r in vs}
        for vs in self.victims.values():
            vs.sort(key=lambda r: self.rank[r.job_id])

    def _member(self, member_id: int) -> MemberView:
        return member_view(self.members, member_id)

    def _victim_rank(self, r: RunningView) -> VictimRank:
        return (self._member(r.member_id).balance, -r.started_at, r.job_id)  # most in debt, then youngest

    def plan(self) -> list[Preemption]:
        if not self.candidates or not self.victims:
            return []
        capacity = Capacity(self.nodes.values())
        # per node class, nodes by their most preferred victim: lets _choose skip classes and stop early
        for node_id, vs in self.victims.items():
            self.order.setdefault(capacity.nodes[node_id].cls.pos, []).append((self.rank[vs[0].job_id], node_id))
        for entries in self.order.values():
            entries.sort()
        requests: dict[RequestKey, Request] = {}
        hopeless: set[RequestKey] = set()  # no victims free enough for it: stays so in this call
        extra: dict[int, int] = {}  # GPUs each member gains by reclaiming in this call
        out: list[Preemption] = []
        for job in self.candidates:
            res, member = job.resources, self._member(job.member_id)
            if _over_cap(member, extra, res):
                continue  # reclaiming would not let it run
            key = request_key(res)
            if key in hopeless:
                continue
            req = _needs_room(capacity, requests, res, key)
            if req is None:
                continue  # impossible, or it fits now and placement will start it
            choice = self._choose(capacity, req)
            if choice is None:
                hopeless.add(key)
                continue
            node, victims, indices = choice
            self._remove(node, victims)
            _hand_over(capacity, node, victims, res, indices)
            extra[member.id] = extra.get(member.id, 0) + res.gpus
            waited = int((self.now - job.submitted_at) // 60)
            for v in victims:
                loser = self._member(v.member_id)
                reason = (
                    f"reclaimed by {member.label} (balance {member.balance:+.1f}) from {loser.label} "
                    f"(balance {loser.balance:+.1f}) after {member.label} waited {waited} min"
                )
                out.append(Preemption(v.job_id, node.id, reason, "reclaim", for_job_id=job.id))
        return out

    def _remove(self, node: NodeState, victims: Sequence[RunningView]) -> None:
        vs, order = self.victims[node.id], self.order[node.cls.pos]
        del order[bisect_left(order, (self.rank[vs[0].job_id], node.id))]
        vs[:] = [v for v in vs if v not in victims]
        if vs:
            insort(order, (self.rank[vs[0].job_id], node.id))

    def _choose(
        self, capacity: Capacity, req: Request
    ) -> tuple[NodeState, tuple[RunningView, ...], tuple[int, ...]] | None:
        """Fewest victims, then the most preferred ones, then the lowest node id."""
        best: tuple[int, tuple[VictimRank, ...], int] | None = None  # (count, victim ranks, node id)
        choice: tuple[NodeState, tuple[RunningView, ...]] | None = None
        for pos in req.indices.keys() & self.order.keys():
            for first, node_id in self.order[pos]:
                limit = MAX_VICTIMS_PER_NODE
                if best is not None:  # a node's victims all rank at or after its first one
                    limit = best[0] if first <= best[1][0] else best[0] - 1
                    if limit < 1:
                        break  # nodes come by their first victim, so none later in this class can do better
                node = capacity.nodes[node_id]
                vs = self.victims[node_id][:MAX_VICTIMS_PER_NODE]
                if not _room(node, req, vs):
                    continue  # even stopping all of them would not make room
                for k in range(1, min(limit, len(vs)) + 1):
                    combo = next((c for c in combinations(vs, k) if _room(node, req, c)), None)
                    if combo is not None:
                        rank = (k, tuple(self.rank[v.job_id] for v in combo), node_id)
                        if best is None or rank < best:
                            best, choice = rank, (node, combo)
                        break
        if choice is None:
            return None
        indices = _gpus(*choice, req)
        return None if indices is None else (*choice, indices)


class _Service:
    """Least attained service: a waiting job that has had little service stops preemptible jobs that
    have had more (a higher band of ``policy.service_levels_gpu_h``), so short jobs are not stuck
    behind long ones whose length nobody declared.

    Bounds on the extra stops: only each member's first waiting job of each shape may stop others in
    one cycle; a victim declared no ``max_runtime`` (a declared limit already ordered it), ran at
    least ``min_runtime_s`` in this attempt, loses at most ``service_max_loss_s`` of run time since
    its last checkpoint, and is stopped for service at most once per level it passed; among
    victims, those that lose the least work since their last checkpoint go first. Fair share has the
    last word: a member's own jobs make way for each other freely; another member's job makes way only
    if the waiting job's member stays at or below it in fair-share order after the swap; an owner's
    job on its own node makes way for no one else.
    """

    def __init__(
        self,
        running: list[RunningView],
        pending: list[JobView],
        nodes: list[NodeView],
        members: list[MemberView],
        policy: Policy,
        now: float,
        taken: set[int],
        held: Mapping[int, int],
    ) -> None:
        self.members = {m.id: m for m in members}
        self.policy, self.now = policy, now
        self.held = held
        self.levels = policy.service_levels_gpu_h
        self.nodes = {n.id: n for n in nodes}
        self.victims: dict[int, list[RunningView]] = {}  # node id -> eligible victims, most preferred first
        self.band: dict[int, int] = {}  # victim job id -> its band now
        self.extra: dict[int, int] = {}  # GPUs each member gains (+) or loses (-) by stops planned here
        for r in running:
            node = self.nodes.get(r.node_id)
            if (
                r.job_id in taken
                or r.stopping
                or not r.preemptible
                or r.max_runtime_s is not None  # its declared limit already placed it: it runs on
                or node is None
                or not node.schedulable
                or now - r.started_at < policy.min_runtime_s
                or r.unsaved(now) > policy.service_max_loss_s
            ):
                continue
            band = service_band(r.attained(now), self.levels)
            if band > r.service_stops:
                self.band[r.job_id] = band
                self.victims.setdefault(r.node_id, []).append(r)
        for vs in self.victims.values():
            vs.sort(key=lambda r: (-self.band[r.job_id], r.loss(now), -r.started_at, r.job_id))
        top = max(self.band.values(), default=0)
        order = queue_order(policy)
        first: dict[tuple[int, RequestKey], tuple[tuple[float | int, ...], JobView]] = {}
        for j in pending:  # each member's first waiting job of each shape: one stop per cycle each
            if j.resources.gpus:
                group, key = (j.member_id, request_key(j.resources)), order(j)
                if group not in first or key < first[group][0]:
                    first[group] = (key, j)
        self.candidates = sorted(
            (j for _, j in first.values() if service_band(j.attained_gpu_s, self.levels) < top),
            key=lambda j: (service_band(j.attained_gpu_s, self.levels), self._priority(j.member_id, 0), order(j)),
        )

    def _member(self, member_id: int) -> MemberView:
        return member_view(self.members, member_id)

    def _priority(self, member_id: int, gpus: int) -> float:
        """The member's fair-share order key with ``gpus`` more (or fewer) GPUs than planned so far."""
        m = self._member(member_id)
        held = m.gpus_in_use + self.extra.get(member_id, 0) + gpus
        return fair_share_key(m.usage_gpu_hours, held, m.share, self.policy.running_weight_hours)

    def _may_stop(self, job: JobView, band: int, v: RunningView) -> bool:
        if self.band[v.job_id] <= band or self.held.get(v.node_id, job.id) != job.id:
            return False
        if v.member_id == job.member_id:
            return True
        if self.nodes[v.node_id].member_id == v.member_id:
            return False  # the owner's own job on its own node
        return self._priority(job.member_id, job.resources.gpus) <= self._priority(v.member_id, -v.gpus)

    def plan(self) -> list[Preemption]:
        if not self.candidates or not self.victims:
            return []
        capacity = Capacity(self.nodes.values())
        requests: dict[RequestKey, Request] = {}
        hopeless: set[tuple[RequestKey, int, int]] = set()  # (request, band, member) that found no room
        out: list[Preemption] = []
        for job in self.candidates:
            res, member = job.resources, self._member(job.member_id)
            band = service_band(job.attained_gpu_s, self.levels)
            key = request_key(res)
            if (key, band, member.id) in hopeless or _over_cap(
                member, {m: max(0, g) for m, g in self.extra.items()}, res
            ):
                continue
            req = _needs_room(capacity, requests, res, key)
            if req is None:
                continue
            choice = self._choose(capacity, req, job, band)
            if choice is None:
                hopeless.add((key, band, member.id))
                continue
            node, victims, indices = choice
            for v in victims:
                self.victims[node.id].remove(v)
                self.extra[v.member_id] = self.extra.get(v.member_id, 0) - v.gpus
            _hand_over(capacity, node, victims, res, indices)
            self.extra[member.id] = self.extra.get(member.id, 0) + res.gpus
            so_far = job.attained_gpu_s / 3600
            for v in victims:
                reason = (
                    f"preempted: it has run {v.attained(self.now) / 3600:.1f} GPU-hours, and "
                    f"{member.label}'s job {job.id} ({so_far:.1f} so far) goes first: {SERVICE_MARK}"
                )
                out.append(Preemption(v.job_id, node.id, reason, "service", for_job_id=job.id))
        return out

    def _choose(
        self, capacity: Capacity, req: Request, job: JobView, band: int
    ) -> tuple[NodeState, list[RunningView], tuple[int, ...]] | None:
        """Fewest victims, then the least work lost, then the lowest node id."""
        best: tuple[int, float, int] | None = None
        choice: tuple[NodeState, list[RunningView]] | None = None
        for node_id, vs in self.victims.items():
            node = capacity.nodes.get(node_id)
            if node is None or node.cls.pos not in req.indices:
                continue
            allowed = [v for v in vs if self._may_stop(job, band, v)]
            chosen = _guests_in_the_way(node, req, allowed) if allowed else None
            if not chosen:
                continue
            cost = (len(chosen), sum(v.loss(self.now) for v in chosen), node_id)
            if best is None or cost < best:
                best, choice = cost, (node, chosen)
        if choice is None:
            return None
        indices = _gpus(*choice, req)
        return None if indices is None else (*choice, indices)


def _room(node: NodeState, req: Request, victims: Sequence[RunningView]) -> bool:
    """Would ``req`` fit on ``node`` once ``victims`` stop? (Quick for nodes of one GPU model.)"""
    res = req.res
    if node.cpus + sum(v.cpus for v in victims) < res.cpus:
        return False
    if node.mem + sum(v.memory_gb for v in victims) + 1e-9 < (res.memory_gb or 0.0):
        return False
    if node.cls.uniform:  # every GPU matches: count them
        return len(node.free) + sum(v.gpus for v in victims) >= res.gpus
    return _gpus(node, victims, req) is not None


def _gpus(node: NodeState, victims: Sequence[RunningView], req: Request) -> tuple[int, ...] | None:
    """The GPUs the job would get on ``node`` once ``victims`` stop, or None if it still won't fit.

    A victim without ``gpu_indices`` is assumed to hold the busy GPUs that match worst."""
    res = req.res
    n_gpus = len(node.cls.gpus)
    match = req.indices[node.cls.pos]
    known = {i for v in victims for i in v.gpu_indices if 0 <= i < n_gpus}
    free = set(node.free) | known
    unknown = sum(v.gpus for v in victims if not v.gpu_indices)
    if unknown:
        busy = [i for i in range(n_gpus) if i not in free]
        busy.sort(key=lambda i: (i in match, i))  # non-matching GPUs first: the worst case
        free.update(busy[:unknown])
    usable = sorted(i for i in match if i in free)
    if len(usable) < res.gpus:
        return None
    return tuple(usable[: res.gpus])
