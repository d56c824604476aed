"""Discrete-event replay of a job trace through the live scheduler's own policy code.

Every decision comes from ``coop.scheduler.decide.decide``, the function the coordinator calls each
cycle (placement: feasibility, fair-share or FIFO order, owner first, best fit, caps; preemption:
owner reclaim, owner first, balance reclaim; the rooms preemption reserves, until they expire), fed
with the same views the coordinator builds. Credits move by ``coop.scheduler.credits``, the
arithmetic the ledger uses. This module only keeps simulated time, its event queue and its model of
running jobs.

A cycle runs only at a time when something happened (arrivals, completions, an owner taking a node
back or giving it back, a job reaching the reclaim wait or the wait after which a wide job holds a
node, a run reaching the minimum run time or a service level); events
at the same time are applied together first. A cycle asks ``decide`` for placements, then for
preemptions in a call of its own, so that each call is offered only what it could use (docs/simulate.md
says why this changes no decision): for placements, only nodes with a free GPU and, per member and
request shape, only as many of the first waiting jobs as could fit in the free GPUs; for preemptions,
only when a waiting job could make room (an owner waiting for its own node, a member in credit that
waited while a member in debt has a job past the minimum run time, a waiting job in a lower service
band than a running job that could make way, a node just taken back), with the jobs and nodes those
rules could use.

A job wider than one node is a gang (``coop.sim.inputs.spread``): the policy places it as one placement
over several nodes, all its ranks start together, run at the pace of the slowest card, and stop
together when any rank is stopped (the job then waits again as a whole, like any stopped job).
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, cast

from coop.scheduler.credits import USAGE_KINDS, credits, decay, idle_credits, run_entries
from coop.scheduler.decide import Decisions, Reservation, Snapshot, decide
from coop.scheduler.feasibility import GpuShape, NodeShape, why_impossible
from coop.scheduler.model import (
    Hold,
    JobView,
    MemberView,
    NodeView,
    Policy,
    RunningView,
    fair_share_key,
    service_band,
)
from coop.scheduler.placement import queue_order
from coop.schemas import MAX_NODES
from coop.sim.inputs import MAX_GPUS, SimJob, SimMember, SimNode, spread
from coop.spec import Resources

NODE_CPUS = 1_000_000  # CPUs and RAM are not simulated: nodes have more than any job asks for
NODE_MEMORY_GB = 1e9
MAX_PREEMPT_ROUNDS = 5  # preempt -> place rounds at one time (the live loop would run them seconds apart)
OFFLINE_REASON = "offline interval in the cluster file"

# event kinds, in the order they apply at one time
FINISH, OWNER_BACK, OWNER_GONE, CHECK = 0, 1, 2, 3

Shape = tuple[int, int, float | None, tuple[str, ...]]  # GPUs per node, nodes, GB per GPU, model allow-list


@dataclass(frozen=True)
class Options:
    policy: str = "coop"  # coop (fair share) | fifo
    seed: int = 0
    jitter: float = 0.0  # sigma of a log-normal factor on each attempt's run time (0: none)
    half_life_h: float = 168.0
    idle_rate: float = 0.25
    reclaim_wait_s: float = 600.0
    min_runtime_s: float = 600.0
    checkpoint_s: float = 0.0  # a stopped attempt keeps its work up to its last checkpoint, one every this
    # many seconds of run time, as jobs writing COOP_CHECKPOINT_DIR do (0: none, it starts again from scratch)
    wide_hold_after_s: float = Policy.wide_hold_after_s  # a wide job that waited this long holds a node
    service: bool = True  # least attained service: queue order and service preemption (Coop only)
    service_levels_gpu_h: tuple[float, ...] = Policy.service_levels_gpu_h
    window: bool = True  # offer the policy only the jobs that could be decided (exact; False for tests)
    series: bool = True  # keep the queue/utilisation time series (plots)

    def scheduler_policy(self) -> Policy:
        """Coop: the live defaults. FIFO: submit order, no owner-first, no reclaim by balance (a waiting
        job never waits long enough); an owner taking its machine back still stops guests."""
        if self.policy == "fifo":
            return Policy(
                fair_share=False, reclaim_wait_s=math.inf, min_runtime_s=self.min_runtime_s,
                service_preemption=False, wide_hold_after_s=math.inf,
            )  # fmt: skip
        return Policy(
            reclaim_wait_s=self.reclaim_wait_s, min_runtime_s=self.min_runtime_s,
            service_levels_gpu_h=self.service_levels_gpu_h if self.service else (),
            service_preemption=self.service, wide_hold_after_s=self.wide_hold_after_s,
        )  # fmt: skip


@dataclass(eq=False)
class Rank:
    """What a run holds on one node (a gang has one per node, rank 0 first)."""

    node: NodeView
    indices: tuple[int, ...]
    view: RunningView  # the policy's view of this rank
    guest: bool  # on another member's node
    tflops: float  # of its GPUs


@dataclass(eq=False)
class Run:
    job: SimJob
    attempt: int
    ranks: tuple[Rank, ...]
    start: float
    end: float
    work_per_s: float = 0.0  # of the job's duration (seconds on a 100 TFLOP/s GPU) done per second here
    alive: bool = True
    over_limit: bool = False  # it ends at its max_runtime, unfinished: the job fails

    @property
    def node(self) -> NodeView:
        return self.ranks[0].node

    @property
    def view(self) -> RunningView:
        return self.ranks[0].view


@dataclass
class JobOutcome:
    first_start: float | None = None
    finish: float | None = None  # completed, or failed at its max_runtime
    attempts: int = 0
    failed: bool = False
    preemptions: int = 0  # attempts stopped by a preemption


@dataclass
class Outcome:
    """What a replay produced: raw figures that ``report`` turns into statistics."""

    jobs: list[SimJob]
    nodes: list[SimNode]
    members: list[str]
    outcome: dict[int, JobOutcome]
    refused: dict[int, str]  # job id -> why no node could ever run it (the coordinator refuses it at submit)
    refused_reason: dict[int, str] = field(default_factory=dict)  # job id -> the unmet requirement (gpus, gpu, ...)
    preemptions: dict[str, int] = field(default_factory=dict)  # kind -> count
    lost_gpu_s: dict[str, float] = field(default_factory=dict)  # kind -> GPU-seconds of work thrown away
    busy_gpu_s: float = 0.0
    used_credits: dict[str, float] = field(default_factory=dict)  # member -> credit-weighted GPU-hours run
    spans: list[tuple[str, float, float, float, int]] = field(default_factory=list)  # (member, start, end,
    # TFLOP/s, GPUs) of every run, lost work included
    last_start: float = 0.0  # the last time a job (re)started
    # while at least one job waits: how long in all, from when until when, GPU-seconds held and lendable
    waiting_s: float = 0.0
    waiting_from: float | None = None
    waiting_until: float | None = None
    busy_gpu_s_waiting: float = 0.0
    lendable_gpu_s_waiting: float = 0.0
    balance: dict[str, float] = field(default_factory=dict)  # member -> ledger balance at the end
    decision_s: list[float] = field(default_factory=list)  # policy time per cycle
    # (t, jobs waiting, busy GPUs, lendable GPUs, GPUs the waiting jobs ask for)
    series: list[tuple[float, int, int, int, int]] = field(default_factory=list)
    end: float = 0.0
    gang_preemptions: dict[str, int] = field(default_factory=dict)  # kind -> stops of gangs (each a whole gang)


class Simulation:
    def __init__(
        self,
        jobs: list[SimJob],
        nodes: list[SimNode],
        options: Options | None = None,
        members: dict[str, SimMember] | None = None,
    ) -> None:
        self.options = options or Options()
        self.settings = members or {}
        self.policy = self.options.scheduler_policy()
        jobs = [spread(j, nodes) for j in jobs]  # a job wider than a node: a gang (the trace's nodes, else fewest)
        self.jobs, self.sim_nodes = jobs, nodes
        self.by_id = {j.id: j for j in jobs}
        names = sorted({j.member for j in jobs} | {n.member for n in nodes})
        self.member_id = {name: i for i, name in enumerate(names, start=1)}
        self.names = names
        self.views: dict[int, NodeView] = {}
        self.node_of: dict[int, SimNode] = {}
        for n in nodes:
            gpus = tuple(GpuShape(n.gpu_model, n.gpu_memory, None) for _ in range(n.gpus))
            self.views[n.id] = NodeView(
                id=n.id, name=n.name, member_id=self.member_id[n.member], tier=n.tier, cpus=NODE_CPUS,
                memory_gb=NODE_MEMORY_GB, gpus=gpus, free_gpus=set(range(n.gpus)), free_cpus=NODE_CPUS,
                free_memory_gb=NODE_MEMORY_GB, tflops_per_gpu=n.tflops,
            )  # fmt: skip
            self.node_of[n.id] = n
        self.resources: dict[Shape, Resources] = {}
        self.job_views: dict[int, JobView] = {}
        self.refused: dict[int, str] = {}
        self.refused_reason: dict[int, str] = {}
        reason: dict[Shape, str] = {}
        shapes = [NodeShape(n.name, n.tier, NODE_CPUS, NODE_MEMORY_GB, self.views[n.id].gpus) for n in nodes]
        why: dict[Shape, str | None] = {}
        gangs: dict[tuple[tuple[str, ...], float | None], tuple[int, int]] = {}  # (models, memory) -> largest gang
        for job in jobs:
            shape = _shape(job)
            if shape not in self.resources:
                self.resources[shape] = _resources(shape)
                refusal = why_impossible(self.resources[shape], shapes) if shapes else None
                why[shape] = None if shapes and refusal is None else (refusal.message if refusal else "no nodes")
                reason[shape] = refusal.field.removeprefix("resources.") if refusal else "no nodes"
                if shape[1] > MAX_NODES:  # job.yaml's limit: the coordinator refuses it as it reads the spec
                    why[shape] = f"{shape[1]} nodes requested but a job spans at most {MAX_NODES}"
                    reason[shape] = "nodes"
            if why[shape] is not None:
                self.refused[job.id] = str(why[shape])
                self.refused_reason[job.id] = reason[shape]
                if reason[shape] == "nodes":  # wider than any gang here? say so, with both widths
                    cards = (job.gpu_models, job.gpu_memory)
                    if cards not in gangs:
                        gangs[cards] = largest_gang(job, nodes)
                    self.refused[job.id] = _too_wide(job, gangs[cards]) or self.refused[job.id]
                continue
            self.job_views[job.id] = JobView(
                job.id, self.member_id[job.member], self.resources[shape], "normal", job.submit, job.preemptible,
                job.max_runtime,
            )  # fmt: skip
        m = len(names) + 1
        # ledger state by member id (index 0 unused), brought up to date at every event time
        self.clock = 0.0
        self.usage = [0.0] * m  # decayed usage, as fair share reads it
        self.balance = [0.0] * m
        self.usage_tflops = [0.0] * m  # rate at which usage grows
        self.net_tflops = [0.0] * m  # rate at which the balance moves (earn - spend)
        self.idle_tflops = [0.0] * m  # idle lendable capacity the member donates
        self.held = [0] * m  # GPUs its jobs hold
        self.guests_on_node = dict.fromkeys(self.views, 0)  # node id -> GPUs guests hold there
        self.with_guests: set[int] = set()  # nodes where guests hold GPUs
        self.with_room: set[int] = set(self.views)  # nodes with a free GPU (lendable or not)
        self.guest_gpus = [0] * m  # GPUs its preemptible jobs hold as guests
        self.guest_runs: list[deque[Run]] = [deque() for _ in range(m)]  # those runs, by start time
        for n in nodes:
            mid = self.member_id[n.member]
            self.idle_tflops[mid] += n.gpus * n.tflops
        self.own_nodes: dict[int, list[int]] = {}  # member -> its nodes
        for n in nodes:
            self.own_nodes.setdefault(self.member_id[n.member], []).append(n.id)
        self.own_shapes: dict[int, set[Shape]] = {}  # shapes that fit one of the member's own nodes
        for shape, res in self.resources.items():
            for n, view in zip(nodes, self.views.values(), strict=True):
                own = NodeShape(n.name, n.tier, NODE_CPUS, NODE_MEMORY_GB, view.gpus)
                if why_impossible(res, [own]) is None:
                    self.own_shapes.setdefault(self.member_id[n.member], set()).add(shape)
        # waiting jobs, per (member, shape)
        self.order = queue_order(self.policy)
        # the order key before the declared limit (Coop: priority and service band): see ``Queue``
        self.segment: Callable[[tuple[float | int, ...]], tuple[float | int, ...]] = (
            (lambda key: key[:2]) if self.policy.fair_share else (lambda key: ())
        )
        self.groups: dict[tuple[int, Shape], Queue] = {}
        self.reservations: list[Reservation] = []  # rooms preemptions made for waiting jobs, until they expire
        self.holds: dict[int, int] = {}  # wide job -> the node it held in the last placement call
        self.attained: dict[int, float] = {}  # job -> GPU-seconds its stopped attempts ran
        self.service_stops: dict[int, int] = {}  # job -> times it was stopped for service order
        self.levels = self.policy.service_levels_gpu_h if self.policy.fair_share else ()
        self.waiting = 0
        self.running: dict[int, Run] = {}
        self.events: list[tuple[float, int, int, object]] = []
        self.seq = 0
        self.taken_back: set[int] = set()  # nodes whose owner took them back since the last preemption check
        self.busy = 0  # GPUs held by running jobs
        self.lendable = sum(n.gpus for n in nodes)  # GPUs on nodes their owners lend right now
        self.result = Outcome(jobs, nodes, names, {j.id: JobOutcome() for j in jobs}, self.refused, self.refused_reason)
        self.used = [0.0] * m
        self.done: dict[int, float] = {}  # job -> work kept by checkpoints of stopped attempts
        self.spans: list[tuple[int, float, float, float, int]] = []  # (member, start, end, TFLOP/s, GPUs) of runs
        self.last_start = 0.0

    # --- the loop --------------------------------------------------------------------------------

    def run(self) -> Outcome:
        for n in self.sim_nodes:
            for start, end in n.offline:
                self._push(start, OWNER_GONE, n.id)
                self._push(end, OWNER_BACK, n.id)
        arrivals = sorted((self.job_views[j.id] for j in self.jobs if j.id in self.job_views),
                          key=lambda v: (v.submitted_at, v.id))  # fmt: skip
        i = 0
        while i < len(arrivals) or self.events:
            t = arrivals[i].submitted_at if i < len(arrivals) else math.inf
            if self.events and self.events[0][0] < t:
                t = self.events[0][0]
            if not self.running and not self.waiting and i >= len(arrivals):
                break  # only owner transitions are left: nothing more to decide
            self._accrue(t)
            while self.events and self.events[0][0] == t:
                _, kind, _, data = heapq.heappop(self.events)
                self._apply(kind, data, t)
            while i < len(arrivals) and arrivals[i].submitted_at == t:
                self._enqueue(arrivals[i])
                if math.isfinite(self.policy.reclaim_wait_s):
                    self._push(t + self.policy.reclaim_wait_s + 1e-6, CHECK, None)
                res = arrivals[i].resources
                if res.gpus > 1 and res.nodes == 1 and math.isfinite(self.policy.wide_hold_after_s):
                    self._push(t + self.policy.wide_hold_after_s, CHECK, None)
                i += 1
            self._cycle(t)
        self._accrue(self.clock)
        r = self.result
        r.balance = {name: self.balance[self.member_id[name]] for name in self.names}
        r.used_credits = {name: self.used[self.member_id[name]] for name in self.names}
        r.last_start = self.last_start
        r.spans = [(self.names[mid - 1], start, stop, tflops, gpus) for mid, start, stop, tflops, gpus in self.spans]
        r.end = max((o.finish for o in r.outcome.values() if o.finish is not None), default=0.0)
        return r

    def _push(self, t: float, kind: int, data: object) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, kind, self.seq, data))

    def _apply(self, kind: int, data: object, t: float) -> None:
        if kind == FINISH:
            job_id, attempt = cast(tuple[int, int], data)
            run = self.running.get(job_id)
            if run is not None and run.attempt == attempt:
                self._stop(run, t, finished=True)
        elif kind in (OWNER_GONE, OWNER_BACK):
            view = self.views[cast(int, data)]
            lendable_before = view.schedulable
            view.reclaim = kind == OWNER_GONE
            view.reclaim_reason = OFFLINE_REASON if view.reclaim else None
            if lendable_before != view.schedulable:
                sign = 1 if view.schedulable else -1
                self.lendable += sign * len(view.gpus)
                self.idle_tflops[view.member_id] += sign * len(view.free_gpus) * (view.tflops_per_gpu or 0.0)
            if view.reclaim:
                self.taken_back.add(view.id)

    def _cycle(self, t: float) -> None:
        """``decide`` for placements, then for preemptions while it stops jobs, each followed by one for
        the placements their rooms allow (up to ``MAX_PREEMPT_ROUNDS`` at one time: the live loop runs
        its cycles seconds apart). Splitting a cycle's placements from its preemptions lets each call be
        offered only what it could use (``_place``, ``_preempt``); the decisions are the same."""
        spent = self._place(t)
        for _ in range(MAX_PREEMPT_ROUNDS):
            decided, took = self._preempt(t)
            spent += took
            if not decided:
                break
            spent += self._place(t)
        if spent:
            self.result.decision_s.append(spent)  # cycles that consulted the policy
        if self.options.series:
            asked = sum(len(q) * shape[0] * shape[1] for (_, shape), q in self.groups.items())
            self.result.series.append((t, self.waiting, self.busy, self.lendable, asked))

    # --- credits ---------------------------------------------------------------------------------

    def _accrue(self, t: float) -> None:
        """Bring usage and balances to ``t``: one ledger slice per member, as ``ledger.accrue`` writes."""
        dt = t - self.clock
        if dt <= 0:
            return
        hours, weight = dt / 3600, decay(dt, self.options.half_life_h)
        rate = self.options.idle_rate
        for mid in range(1, len(self.usage)):
            self.usage[mid] = self.usage[mid] * weight + credits(hours, self.usage_tflops[mid])
            idle = idle_credits(rate, hours, 1, self.idle_tflops[mid], True)
            self.balance[mid] += credits(hours, self.net_tflops[mid]) + idle
        if self.waiting:  # the cluster has been as the last cycle left it since self.clock
            r = self.result
            if r.waiting_from is None:
                r.waiting_from = self.clock
            r.waiting_until = t
            r.waiting_s += dt
            r.busy_gpu_s_waiting += self.busy * dt
            r.lendable_gpu_s_waiting += self.lendable * dt
        self.clock = t

    def _rates(self, rank: Rank, sign: int) -> None:
        node = rank.node
        for mid, amount, kind in run_entries(rank.view.member_id, node.member_id, rank.tflops):
            self.net_tflops[mid] += sign * amount
            if kind in USAGE_KINDS:
                self.usage_tflops[mid] += sign * abs(amount)
        if node.schedulable:
            self.idle_tflops[node.member_id] -= sign * rank.tflops

    # --- waiting jobs ----------------------------------------------------------------------------

    def _enqueue(self, view: JobView) -> None:
        key = (view.member_id, _shape(self._job(view.id)))
        queue = self.groups.get(key) or self.groups.setdefault(key, Queue(self.order, self.segment))
        queue.push(view)
        self.waiting += 1

    def _job(self, job_id: int) -> SimJob:
        return self.by_id[job_id]

    def _offer(self, first: dict[tuple[int, Shape], int], oldest: dict[tuple[int, Shape], int] | None = None
               ) -> list[JobView]:  # fmt: skip
        """Take off their queues the ``first[key]`` waiting jobs of each group that go first in the
        policy's order, then the ``oldest[key]`` oldest of those left."""
        out = []
        for key, k in first.items():
            out += [self.job_views[i] for i in self.groups[key].pop_first(k)]
        for key, k in (oldest or {}).items():
            out += [self.job_views[i] for i in self.groups[key].pop_oldest(k)]
        return out

    def _take_reserved(self) -> list[JobView]:
        """The reserved jobs ``_offer`` did not take off their queues."""
        out = []
        for job_id in sorted({r.job_id for r in self.reservations}):
            view = self.job_views[job_id]
            queue = self.groups.get((view.member_id, _shape(self._job(job_id))))
            if queue is not None and queue.remove(job_id):
                out.append(view)
        return out

    def _give_back(self, jobs: list[JobView], taken: set[int]) -> None:
        for view in jobs:
            if view.id not in taken:
                self.groups[(view.member_id, _shape(self._job(view.id)))].push(view)

    def _members(self) -> list[MemberView]:
        default = SimMember()
        return [
            MemberView(
                mid, (m := self.settings.get(name, default)).share, m.gpu_cap, self.held[mid], self.usage[mid],
                self.balance[mid], name,
            )
            for name, mid in self.member_id.items()
        ]  # fmt: skip

    # --- placement -------------------------------------------------------------------------------

    def _place(self, t: float) -> float:
        """One ``decide`` call for placements only, applied; the time it took. It is
        offered the nodes with a free GPU and, per (member, shape), as many waiting jobs first in queue
        order as their free GPUs could hold, and reserved jobs."""
        if not self.waiting:
            return 0.0
        free_nodes = [v for v in map(self.views.__getitem__, sorted(self.with_room)) if v.schedulable]
        if not free_nodes:
            return 0.0  # holds stay as they were: nothing could take their GPUs
        room = [len(v.free_gpus) for v in free_nodes]
        slots: dict[tuple[int, int], int] = {}  # (GPUs per node, nodes) -> how many such jobs the free GPUs
        # could hold (a gang's ranks are on distinct nodes: nodes with room for one rank, over its nodes)
        limit = {}
        for key, queue in self.groups.items():
            size = key[1][:2]
            if size not in slots:
                slots[size] = sum(r // size[0] for r in room) // size[1]
            if queue and slots[size]:
                limit[key] = slots[size] if self.options.window else len(queue)
        offered = self._offer(limit) + self._take_reserved() + self._take_waited_wide(t)
        if not offered:
            return 0.0
        running: list[RunningView] = []
        cutoff = t - self.policy.wide_hold_after_s
        holders = {
            v.member_id for v in offered if v.resources.gpus > 1 and v.resources.nodes == 1 and v.submitted_at <= cutoff
        }
        if holders:  # a wide job may hold one of its member's nodes: it looks at them and what runs there
            ids = {v.id for v in free_nodes} | {i for m in holders for i in self.own_nodes.get(m, ())}
            free_nodes = [v for v in map(self.views.__getitem__, sorted(ids)) if v.schedulable]
            running = [rank.view for r in self.running.values() for rank in r.ranks if rank.node.id in ids]
        snapshot = Snapshot(offered, free_nodes, self._members(), running, self.policy, t, self.reservations,
                            holds=self.holds, only="placements")  # fmt: skip
        started = time.perf_counter()
        decisions = decide(snapshot)
        if decisions.holds and self.options.window and (extra := self._onto_holds(decisions.holds, limit, t)):
            # later jobs of a shape may use held GPUs where the first could not: ask again with them
            # (the holds come out the same: they are set before any job is placed)
            offered += extra
            snapshot = replace(snapshot, jobs=offered)
            decisions = decide(snapshot)
        took = time.perf_counter() - started
        self._apply_decisions(snapshot, decisions, offered)
        return took

    def _onto_holds(self, holds: list[Hold], limit: dict[tuple[int, Shape], int], t: float) -> list[JobView]:
        """Waiting jobs placement could start on GPUs held for wide jobs beyond those ``_offer`` took:
        per group (as many as ``limit`` says its free GPUs could hold) and hold, the first in queue order
        whose declared limit ends before the hold's node frees or, for the wide job's member, that are
        preemptible (``placement._onto_holds``). A gang never uses held GPUs."""
        out = []
        for key, k in limit.items():
            mid, shape = key
            if shape[1] > 1:
                continue
            queue = self.groups[key]
            for h in holds:  # (a margin over ``until``: offering one job more changes nothing)
                out += [self.job_views[i] for i in queue.pop_onto_hold(k, h.member_id == mid, h.until - t + 1e-6)]
        return out

    def _take_waited_wide(self, t: float) -> list[JobView]:
        """Each member's longest-waiting job of 2+ GPUs on one node (a gang holds none), if it waited long
        enough to hold a node and ``_offer`` did not take it off its queue."""
        cutoff = t - self.policy.wide_hold_after_s
        oldest: dict[int, tuple[float, int, Queue]] = {}
        for (mid, shape), queue in self.groups.items():
            if shape[0] > 1 and shape[1] == 1 and queue and queue.oldest() <= cutoff:
                key = (queue.oldest(), queue.oldest_id())
                if mid not in oldest or key < oldest[mid][:2]:
                    oldest[mid] = (*key, queue)
        return [self.job_views[i] for *_, queue in oldest.values() for i in queue.pop_oldest(1)]

    def _decide(self, snapshot: Snapshot, offered: list[JobView]) -> tuple[bool, float]:
        """``decide`` on ``snapshot``, applied (``_apply_decisions``): whether it stopped a job, and the time
        it took."""
        started = time.perf_counter()
        decisions = decide(snapshot)
        took = time.perf_counter() - started
        return self._apply_decisions(snapshot, decisions, offered), took

    def _apply_decisions(self, snapshot: Snapshot, decisions: Decisions, offered: list[JobView]) -> bool:
        """Its placements start, its preemptions stop (each stopped job waits again), its reservations
        carry over, the offered jobs not started go back to their queues. Whether it stopped a job."""
        t = snapshot.now
        for p in decisions.placements:
            self._start(self._job(p.job_id), p.parts, t)
        self._give_back(offered, {p.job_id for p in decisions.placements})
        self.reservations = decisions.reservations
        if snapshot.only == "placements":
            self.holds = {h.job_id: h.node_id for h in decisions.holds}
        stopped = False
        for pre in decisions.preemptions:
            run = self.running.get(pre.job_id)
            if run is not None:
                self._stop(run, t, finished=False, kind=pre.kind)
                stopped = True
        return stopped

    def _start(self, job: SimJob, parts: tuple[tuple[int, tuple[int, ...]], ...], t: float) -> None:
        """Start ``job`` on every (node, GPUs) of ``parts`` (a gang's ranks, all at once); it runs at the
        pace of its slowest card."""
        out = self.result.outcome[job.id]
        out.attempts += 1
        self.last_start = t
        if out.first_start is None:
            out.first_start = t
        nodes = [self.views[node_id] for node_id, _ in parts]
        slowest = min(node.tflops_per_gpu or 0.0 for node in nodes)
        left = job.duration - self.done.get(job.id, 0.0)
        run_s = left * 100.0 / slowest * self._jitter(job.id, out.attempts)
        mid = self.member_id[job.member]
        attained = self.attained.get(job.id, 0.0)
        stops = self.service_stops.get(job.id, 0)
        ranks = tuple(
            Rank(node, indices,
                 RunningView(job.id, mid, node.id, len(indices), job.preemptible, t, indices, 1, 0.0,
                             attained_gpu_s=attained, max_runtime_s=job.max_runtime, service_stops=stops,
                             submitted_at=job.submit, nodes=len(parts)),
                 mid != node.member_id, (node.tflops_per_gpu or 0.0) * len(indices))
            for node, (_, indices) in zip(nodes, parts, strict=True)
        )  # fmt: skip
        limit = job.max_runtime if job.max_runtime is not None else math.inf
        run = Run(job, out.attempts, ranks, t, t + min(run_s, limit), left / run_s, over_limit=run_s > limit)
        gpus = sum(len(rank.indices) for rank in ranks)
        for rank in ranks:
            node, held = rank.node, len(rank.indices)
            self._rates(rank, +1)  # before the GPUs leave the node's idle capacity
            node.free_gpus.difference_update(rank.indices)
            if not node.free_gpus:
                self.with_room.discard(node.id)
            if rank.guest:
                self.guests_on_node[node.id] += held
                self.with_guests.add(node.id)
                if job.preemptible:
                    self.guest_gpus[mid] += held
        guest = any(rank.guest for rank in ranks)
        if guest and job.preemptible:
            self.guest_runs[mid].append(run)
        self.running[job.id] = run
        self.waiting -= 1
        self.held[mid] += gpus
        self.busy += gpus
        if job.preemptible and self.policy.service_preemption and self.levels and len(ranks) == 1:
            # it may make way for less served jobs once it ran the minimum time, and at each level it passes
            self._push(t + self.options.min_runtime_s, CHECK, None)
            for level in self.levels:
                if level * 3600 > attained:
                    self._push(t + (level * 3600 - attained) / gpus, CHECK, None)
        elif guest and job.preemptible:  # a gang makes way only for owners and balances, not for service
            self._push(t + self.options.min_runtime_s, CHECK, None)
        self._push(run.end, FINISH, (job.id, out.attempts))

    def _jitter(self, job_id: int, attempt: int) -> float:
        sigma = self.options.jitter
        if sigma <= 0:
            return 1.0
        rng = random.Random(f"{self.options.seed}:{job_id}:{attempt}")
        return math.exp(rng.gauss(0.0, sigma))

    def _stop(self, run: Run, t: float, finished: bool, kind: str = "") -> None:
        """End ``run`` on every node it holds (a gang's ranks all stop together)."""
        job, mid = run.job, run.view.member_id
        hours = (t - run.start) / 3600
        gpus = 0
        for rank in run.ranks:
            node, held = rank.node, len(rank.indices)
            gpus += held
            node.free_gpus.update(rank.indices)
            self.with_room.add(node.id)
            self._rates(rank, -1)  # after the GPUs are back in the node's idle capacity
            if rank.guest:
                self.guests_on_node[node.id] -= held
                if not self.guests_on_node[node.id]:
                    self.with_guests.discard(node.id)
                if job.preemptible:
                    self.guest_gpus[mid] -= held
            self.used[mid] += credits(hours, rank.tflops)
            self.spans.append((mid, run.start, t, rank.tflops, held))
        run.alive = False
        del self.running[job.id]
        self.held[mid] -= gpus
        self.busy -= gpus
        self.result.busy_gpu_s += (t - run.start) * gpus
        if finished:
            self.result.outcome[job.id].finish = t
            self.result.outcome[job.id].failed = run.over_limit
            return
        ran = t - run.start
        every = self.options.checkpoint_s
        kept = math.floor(ran / every) * every if every > 0 else 0.0
        self.done[job.id] = self.done.get(job.id, 0.0) + kept * run.work_per_s
        self.attained[job.id] = self.attained.get(job.id, 0.0) + ran * gpus
        if kind == "service":
            self.service_stops[job.id] = self.service_stops.get(job.id, 0) + 1
        view = replace(self.job_views[job.id], attained_gpu_s=self.attained[job.id])
        self.job_views[job.id] = replace(view, service_stops=self.service_stops.get(job.id, 0))
        r = self.result
        r.outcome[job.id].preemptions += 1
        r.preemptions[kind] = r.preemptions.get(kind, 0) + 1
        r.lost_gpu_s[kind] = r.lost_gpu_s.get(kind, 0.0) + (ran - kept) * gpus
        if len(run.ranks) > 1:
            r.gang_preemptions[kind] = r.gang_preemptions.get(kind, 0) + 1
        self._enqueue(self.job_views[job.id])  # back to waiting, first in line by its submit time

    # --- preemption ------------------------------------------------------------------------------

    def _preempt(self, t: float) -> tuple[bool, float]:
        """One ``decide`` call for preemptions when some waiting job could make room, applied; whether it
        stopped a job, and the time it took.

        The call gets the nodes that matter (free GPUs, just taken back, a donor's own node whose
        guests stand in its way, eligible victims) and the waiting jobs each rule could serve, on the
        cluster as the placements before it left it (what the coordinator's one call sees)."""
        if not self.running or not (self.waiting or self.taken_back):
            self.taken_back.clear()
            return False, 0.0
        owner_nodes, reach = self._owner_room() if self.policy.fair_share else ([], {})
        creditors, victims, victim_nodes = self._reclaim_room(t)
        top, service_nodes = self._service_room(t)
        wide = self._wide_room()
        if not (self.taken_back or owner_nodes or creditors or top or wide):
            return False, 0.0
        room = [v for v in map(self.views.__getitem__, self.with_room) if v.schedulable]
        offered = self._offer(*self._preempt_limits(reach, creditors, room, victims, top)) + self._take_held(wide)
        nodes, ids = self._preempt_nodes(room, owner_nodes, victim_nodes | service_nodes | set(wide.values()))
        self.taken_back.clear()
        running = [
            self._checkpointed(r, rank, t) for r in self.running.values() for rank in r.ranks if rank.node.id in ids
        ]
        snapshot = Snapshot(offered, nodes, self._members(), running, self.policy, t, self.reservations,
                            holds=self.holds, only="preemptions")  # fmt: skip
        return self._decide(snapshot, offered)

    def _wide_room(self) -> dict[int, int]:
        """The holds (job -> node) whose wide job could start once what runs on its node that may be
        stopped for it (guests, the member's own preemptible jobs) stops."""
        out = {}
        for job_id, node_id in self.holds.items():
            view = self.views[node_id]
            if not view.schedulable or job_id in self.running:
                continue
            wide = self.job_views[job_id]
            stoppable = sum(
                len(rank.indices) for r in self.running.values() for rank in r.ranks
                if rank.node.id == node_id and (
                    r.view.member_id != view.member_id
                    or (r.job.preemptible and r.job.submit > wide.submitted_at and not r.view.attained_gpu_s))
            )  # fmt: skip
            if len(view.free_gpus) + stoppable >= wide.resources.gpus:
                out[job_id] = node_id
        return out

    def _take_held(self, wide: dict[int, int]) -> list[JobView]:
        """The held jobs of ``wide`` that ``_offer`` did not take off their queues."""
        out = []
        for job_id in sorted(wide):
            view = self.job_views[job_id]
            queue = self.groups.get((view.member_id, _shape(self._job(job_id))))
            if queue is not None and queue.remove(job_id):
                out.append(view)
        return out

    def _reclaim_room(self, t: float) -> tuple[set[int], int, set[int]]:
        """Balance reclaim: the members in credit whose oldest waiting job waited the reclaim wait, when
        members in debt hold enough preemptible GPUs on one node for one of their jobs (else none), the
        GPUs those victims hold in all, and their nodes."""
        creditors = {  # a waiting gang reclaims nothing: it waits for free room
            mid for (mid, shape), q in self.groups.items()
            if q and shape[1] == 1 and self.balance[mid] > 0 and q.oldest() < t - self.policy.reclaim_wait_s
        }  # fmt: skip
        if not creditors:
            return set(), 0, set()
        victims, widest, victim_nodes = self._victims(t)
        if not any(
            q and mid in creditors and shape[1] == 1 and shape[0] <= widest for (mid, shape), q in self.groups.items()
        ):
            return set(), 0, set()
        return creditors, victims, victim_nodes

    def _preempt_limits(
        self, reach: dict[int, int], creditors: set[int], room: list[NodeView], victims: int, top: int
    ) -> tuple[dict[tuple[int, Shape], int], dict[tuple[int, Shape], int]]:
        """How many waiting jobs of each group preemption is offered: owner first serves them in queue
        order, as many as its donor's nodes could reach; balance reclaim the oldest, as many as the
        free GPUs in ``room`` plus the ``victims``' could hold; service preemption its first job, when
        that one's band is below ``top`` (only a group's first job may stop others in one cycle). A
        waiting gang is offered none: preemption makes room for no gang."""
        reclaimable = sum(len(v.free_gpus) for v in room) + victims
        first, oldest = {}, {}
        for key, queue in self.groups.items():
            mid, shape = key
            if not queue or shape[1] > 1:
                continue
            if reach.get(mid, 0) >= shape[0] and shape in self.own_shapes.get(mid, ()):
                first[key] = reach[mid] // shape[0] + 1 if self.options.window else len(queue)
            if top and queue.first_band() < top:
                first[key] = max(first.get(key, 0), 1 if self.options.window else len(queue))
            if mid in creditors:
                oldest[key] = reclaimable // shape[0] + 1 if self.options.window else len(queue)
        return first, oldest

    def _service_room(self, t: float) -> tuple[int, set[int]]:
        """Service preemption: the highest band of a running job that some waiting job could stop now
        (preemptible, ran the minimum time, little unsaved work, stopped for service fewer times than
        the levels it passed, in a higher band than the first waiting job of a member that fair share
        lets stop it, on a node where stopping such jobs makes room for that job), else 0; and those
        jobs' nodes. A cheap superset of what ``decide`` could do (GPU models are not checked)."""
        if not (self.policy.service_preemption and self.levels and self.waiting):
            return 0, set()
        firsts: dict[int, list[tuple[float, int]]] = {}  # member -> (band, GPUs) of its groups' first jobs
        for (mid, shape), queue in self.groups.items():
            if queue and shape[1] == 1:  # a gang stops no one for service
                firsts.setdefault(mid, []).append((queue.first_band(), shape[0]))
        default, weight = SimMember(), self.policy.running_weight_hours

        def priority(mid: int, gpus: int) -> float:  # fair-share order, as the policy computes it
            share = self.settings.get(self.names[mid - 1], default).share
            return fair_share_key(self.usage[mid], self.held[mid] + gpus, share, weight)

        ahead = {mid: priority(mid, 1) for mid in firsts}
        every, most = self.options.checkpoint_s, self.policy.service_max_loss_s
        by_node: dict[int, list[tuple[Run, int]]] = {}  # node -> runs that could make way, with their band
        for run in self.running.values():
            view = run.view
            ran = t - view.started_at
            if view.nodes > 1 or not view.preemptible or ran < self.policy.min_runtime_s or not run.node.schedulable:
                continue  # a gang is not stopped for service
            if view.max_runtime_s is not None:
                continue
            if (ran % every if every > 0 else ran) > most:  # unsaved work, with a checkpoint every ``every``
                continue
            band = service_band(view.attained(t), self.levels)
            if band > view.service_stops:
                by_node.setdefault(run.node.id, []).append((run, band))
        top, nodes = 0, set()
        for node_id, runs in by_node.items():
            free = len(self.views[node_id].free_gpus)
            for mid, groups in firsts.items():
                for first_band, gpus in groups:
                    usable = [
                        (run, band) for run, band in runs
                        if band > first_band and (
                            run.view.member_id == mid
                            or (run.node.member_id != run.view.member_id
                                and ahead[mid] <= priority(run.view.member_id, -run.view.gpus))
                        )
                    ]  # fmt: skip
                    if usable and free + sum(run.view.gpus for run, _ in usable) >= gpus:
                        top = max(top, *(band for _, band in usable))
                        nodes.add(node_id)
        return top, nodes

    def _checkpointed(self, run: Run, rank: Rank, t: float) -> RunningView:
        """A rank's view with its run's last checkpoint (one every ``checkpoint_s`` of run time)."""
        every = self.options.checkpoint_s
        if every <= 0 or t - run.start < every:
            return rank.view
        return replace(rank.view, checkpoint_at=run.start + math.floor((t - run.start) / every) * every)

    def _preempt_nodes(
        self, room: list[NodeView], owner_nodes: list[int], victim_nodes: set[int]
    ) -> tuple[list[NodeView], set[int]]:
        """The nodes preemption sees, and their ids: those with a free GPU, a donor's nodes whose guests
        stand in its way, the victims' nodes, and nodes just taken back that hold guests."""
        if not self.options.window:
            return list(self.views.values()), set(self.views)
        ids = {v.id for v in room} | set(owner_nodes) | victim_nodes
        ids |= {i for i in self.taken_back if self.guests_on_node[i]}
        return [self.views[i] for i in sorted(ids)], ids

    def _owner_room(self) -> tuple[list[int], dict[int, int]]:
        """Owner first: the lendable nodes whose guests stand between their donor and its smallest
        waiting job that fits its own nodes (guests plus free GPUs are enough for it), and per donor
        the GPUs those nodes could give it in all. Owner first can serve no more than that."""
        need: dict[int, int] = {}
        for (mid, shape), queue in self.groups.items():  # (a gang's shape fits no single node)
            if queue and shape in self.own_shapes.get(mid, ()):
                need[mid] = min(need.get(mid, shape[0]), shape[0])
        nodes: list[int] = []
        reach: dict[int, int] = {}
        if not need:
            return nodes, reach
        for node_id in self.with_guests:
            view = self.views[node_id]
            room = self.guests_on_node[node_id] + len(view.free_gpus)
            if view.member_id in need and room >= need[view.member_id] and view.schedulable:
                nodes.append(node_id)
                reach[view.member_id] = reach.get(view.member_id, 0) + room
        return nodes, reach

    def _victims(self, t: float) -> tuple[int, int, set[int]]:
        """For balance reclaim: GPUs held by preemptible guest jobs of members in debt that ran the
        minimum time, the most it could free on one node (with that node's free GPUs), and those nodes."""
        cutoff = t - self.policy.min_runtime_s
        room: dict[int, int] = {}
        total = 0
        for mid in range(1, len(self.balance)):
            if self.balance[mid] >= 0:
                continue
            runs = self.guest_runs[mid]
            while runs and not runs[0].alive:
                runs.popleft()
            for run in runs:
                if run.start > cutoff:
                    break  # started in time order: the rest are younger
                if not run.alive:
                    continue
                for rank in run.ranks:  # a gang's ranks on other members' nodes: each may be stopped
                    node = rank.node
                    if rank.guest and node.schedulable:
                        room[node.id] = room.get(node.id, len(node.free_gpus)) + len(rank.indices)
                        total += len(rank.indices)
        return total, max(room.values(), default=0), set(room)


Entry = tuple[tuple[float | int, ...], float, int, int]  # (order key, declared limit or inf, stamp, job id)


class Queue:
    """One (member, shape) group's waiting jobs, in the policy's queue order and by age, in heaps with
    lazy deletion (an entry counts only while its stamp is the job's current one).

    Queue order is kept as one heap per segment of the order key and kind (preemptible or not); a
    segment is the part of the key before the declared limit (Coop: priority and service band; FIFO's
    key holds no limit: one segment), so within a Coop heap jobs come by shortest declared limit. That
    lets ``pop_onto_hold`` find the first jobs in order that could use GPUs held for a wide job without
    walking past the others."""

    __slots__ = ("order", "segment", "heaps", "entries", "by_age", "live", "stamp")

    def __init__(
        self,
        order: Callable[[JobView], tuple[float | int, ...]],
        segment: Callable[[tuple[float | int, ...]], tuple[float | int, ...]] = lambda key: (),
    ) -> None:
        self.order, self.segment = order, segment
        self.heaps: dict[tuple[tuple[float | int, ...], bool], list[Entry]] = {}  # (segment, preemptible) -> heap
        self.entries = 0  # in ``heaps``, stale ones included
        self.by_age: list[tuple[float, int, int, int]] = []  # (submit, id, stamp, id)
        self.live: dict[int, int] = {}  # job id -> its current stamp
        self.stamp = 0

    def __len__(self) -> int:
        return len(self.live)

    def push(self, view: JobView) -> None:
        self.stamp += 1
        self.live[view.id] = self.stamp
        key = self.order(view)
        limit = view.max_runtime_s if view.max_runtime_s is not None else math.inf
        heap = self.heaps.get((self.segment(key), view.preemptible))
        if heap is None:
            heap = self.heaps[(self.segment(key), view.preemptible)] = []
        heapq.heappush(heap, (key, limit, self.stamp, view.id))
        heapq.heappush(self.by_age, (view.submitted_at, view.id, self.stamp, view.id))
        self.entries += 1
        if self.entries + len(self.by_age) > 4 * len(self.live) + 64:
            for heap in self.heaps.values():
                heap[:] = [e for e in heap if self.live.get(e[3]) == e[2]]
                heapq.heapify(heap)
            self.entries = sum(len(heap) for heap in self.heaps.values())
            self.by_age = [e for e in self.by_age if self.live.get(e[3]) == e[2]]
            heapq.heapify(self.by_age)

    def remove(self, job_id: int) -> bool:
        return self.live.pop(job_id, None) is not None

    def _top(self, heap: list[Any]) -> Any:
        while heap and self.live.get(heap[0][-1]) != heap[0][-2]:
            heapq.heappop(heap)
            if heap is not self.by_age:
                self.entries -= 1
        return heap[0] if heap else None

    def _merge(self, k: int, bound: Callable[[bool], float]) -> list[int]:
        """Take off the first ``k`` jobs in queue order among those each heap admits: while its next
        job's declared limit is at most ``bound(preemptible)`` (a heap's limits only grow)."""
        out: list[int] = []
        heaps = [(heap, bound(preemptible)) for (_, preemptible), heap in self.heaps.items()]
        while len(out) < k:
            best: tuple[Entry, list[Entry]] | None = None
            for heap, most in heaps:
                top = self._top(heap)
                if top is not None and top[1] <= most and (best is None or top < best[0]):
                    best = (top, heap)
            if best is None:
                break
            top, heap = best
            heapq.heappop(heap)
            self.entries -= 1
            del self.live[top[-1]]
            out.append(top[-1])
        return out

    def pop_first(self, k: int) -> list[int]:
        return self._merge(k, lambda preemptible: math.inf)

    def pop_onto_hold(self, k: int, mine: bool, within: float) -> list[int]:
        """Take off the first ``k`` jobs in queue order that could go onto GPUs held for a wide job (as
        ``placement.place`` lets them): those whose declared limit is at most ``within`` seconds and,
        when the group is the wide job's member's (``mine``), its preemptible jobs. Needs the declared
        limit right after the segment in the order key (Coop's order; FIFO holds nothing)."""
        return self._merge(k, lambda preemptible: math.inf if mine and preemptible else within)

    def pop_oldest(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k and (top := self._top(self.by_age)) is not None:
            heapq.heappop(self.by_age)
            del self.live[top[-1]]
            out.append(top[-1])
        return out

    def first_band(self) -> float:
        """The service band of the job first in order (the policy's order with fair share)."""
        tops = [top for heap in self.heaps.values() if (top := self._top(heap)) is not None]
        return math.inf if not tops else float(min(tops)[0][1])

    def oldest_id(self) -> int:
        top = self._top(self.by_age)
        return -1 if top is None else int(top[1])

    def oldest(self) -> float:
        top = self._top(self.by_age)
        return math.inf if top is None else float(top[0])


def largest_gang(job: SimJob, nodes: list[SimNode]) -> tuple[int, int]:
    """The widest gang the cluster could run for ``job``: (nodes, GPUs on each) over the nodes that meet
    its GPU models and memory, every rank with as many GPUs (a job spec's ``resources.gpus`` is per node),
    at most ``MAX_NODES`` of them, the most GPUs in all (ties: fewer nodes). (0, 0) when no node meets it."""
    sizes = sorted(
        (n.gpus for n in nodes
         if (not job.gpu_models or n.gpu_model in job.gpu_models) and n.gpu_memory >= (job.gpu_memory or 0.0)),
        reverse=True,
    )[:MAX_NODES]  # fmt: skip
    best = (0, 0)
    for k, size in enumerate(sizes, start=1):  # k nodes of the k-th widest
        if k * size > best[0] * best[1]:
            best = (k, size)
    return best


def _too_wide(job: SimJob, gang: tuple[int, int]) -> str | None:
    """The refusal of a job wider than the largest gang the cluster could make for it (``largest_gang``),
    with both widths (the coordinator's own message names only the node counts of the shape it was
    spread to); None when the job is no wider than that (its shape, not its width, is what no set of
    nodes can hold)."""
    count, size = gang
    if not count or job.gpus <= count * size:
        return None
    which = " on nodes that meet its GPU model and memory" if job.gpu_models or job.gpu_memory else ""
    most = f"; a job spans at most {MAX_NODES} nodes" if count == MAX_NODES else ""
    what, plural = ("job", "node") if count == 1 else ("gang", "nodes")
    largest = f"{count * size} GPUs ({count} {plural} of {size}{most})"
    return f"asks {job.gpus} GPUs; the largest {what} this cluster can make{which} is {largest}"


def _shape(job: SimJob) -> Shape:
    return (job.per_node, job.nodes or 1, job.gpu_memory, job.gpu_models)


def _resources(shape: Shape) -> Resources:
    gpus, nodes, memory, models = shape
    spec: dict[str, object] = {"gpus": min(gpus, MAX_GPUS), "nodes": min(nodes, MAX_NODES)}
    if memory:
        spec["gpu_memory"] = f"{memory:g}GB+"
    if models:
        spec["gpu"] = list(models)
    res = Resources.model_validate(spec)
    # more per node than a job spec allows, and than any node holds: why_impossible refuses it, naming the
    # largest node; more nodes than a spec allows: the replay refuses it as the coordinator would
    if gpus <= MAX_GPUS and nodes <= MAX_NODES:
        return res
    return res.model_copy(update={"gpus": gpus, "nodes": nodes})


def replay(
    jobs: list[SimJob],
    nodes: list[SimNode],
    options: Options | None = None,
    members: dict[str, SimMember] | None = None,
) -> Outcome:
    return Simulation(jobs, nodes, options, members).run()
