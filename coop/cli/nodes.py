"""``coop nodes`` and ``coop node pause|resume|drain|undrain|remove ID``: the donated machines."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

import typer
from rich.text import Text

from coop.cli import config, output

app = typer.Typer()
node_app = typer.Typer(
    help="Change one node: pause/resume (owner first), drain/undrain (no new jobs), remove (retire).",
    no_args_is_help=True,
)
app.add_typer(node_app, name="node")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
NodeId = Annotated[int, typer.Argument(help="Node ID, as listed by 'coop nodes'.")]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Also while jobs run there: they are requeued, as for a lost node.")
]


def gpu_summary(gpus: list[dict[str, Any]]) -> str:
    """``2× RTX4090 24GB, 1× A100 80GB``; ``-`` for CPU-only nodes."""
    counts = Counter((g["model"] or g["name"], round(g["memory_gb"])) for g in gpus)
    return ", ".join(f"{n}× {model} {mem}GB" for (model, mem), n in counts.items()) or "-"


def flags(node: dict[str, Any]) -> str:
    """Who paused it (owner, coordinator) or what the owner runs, then draining."""
    found = []
    if node.get("foreign_ray_work"):  # Ray work Coop did not start: 'coop admin foreign' lists it
        found.append(f"! foreign Ray work ({node['foreign_ray_work']})")
    if node.get("reclaim") or node.get("paused"):
        found.append(node.get("reclaim_reason") or "paused")
    if node.get("draining"):
        found.append("draining")
    if node.get("retired_by"):
        found.append(node["retired_by"])
    return ", ".join(found)


def state_cell(node: dict[str, Any]) -> Text:
    """An unapproved node says so first: it gets no Ray token and no jobs until an admin approves it."""
    if node.get("approved", True) or node["state"] in ("left", "retired"):
        return output.state(node["state"])
    return Text(f"awaiting approval ({node['state']})", style="bold yellow")


@app.command("nodes")
def list_nodes(
    as_json: JsonOpt = False,
    retired: Annotated[bool, typer.Option("--retired", help="Also the nodes removed from the cooperative.")] = False,
) -> None:
    """List the nodes in the cooperative, their GPUs and state."""
    with config.client() as client:
        nodes = client.request("GET", "/nodes", params={"retired": "true"}) if retired else client.nodes()
    if as_json:
        output.print_json(nodes)
        return
    if not nodes:
        output.say("No nodes yet: a donor joins one with 'coop-agent join --coordinator URL --token-file FILE'.")
        return
    rows = [
        (
            n["id"],
            n["name"],
            n["member"],
            state_cell(n),
            n["tier"],
            gpu_summary(n["gpus"]),
            n["cpus"],
            f"{n['memory_gb']:.0f}GB",
            f"{n['tflops_per_gpu']:.0f}" if n["tflops_per_gpu"] else "-",
            flags(n),
            output.ago(n["last_heartbeat_at"]),
        )
        for n in nodes
    ]
    columns = ("ID", "NAME", "MEMBER", "STATE", "TIER", "GPUS", "CPUS", "RAM", "TFLOPS/GPU", "FLAGS", "HEARTBEAT")
    output.show(output.table(columns, rows))
    gone = ("left", "retired")
    if waiting := [str(n["id"]) for n in nodes if not n.get("approved", True) and n["state"] not in gone]:
        output.info(f"awaiting approval: an admin runs 'coop admin node approve ID' (ID: {', '.join(waiting)})")


def _act(node_id: int, action: str, done: str, as_json: bool) -> None:
    with config.client() as client:
        node = client.node_action(node_id, action)
    if as_json:
        output.print_json(node)
    elif action == "resume" and node.get("paused"):  # the owner's own pause stays until the owner resumes
        output.say(f"node {node['id']} ({node['name']}) resumed from the coordinator, but still paused: "
                   f"{node.get('reclaim_reason') or 'by its owner'}")  # fmt: skip
    else:
        output.say(f"node {node['id']} ({node['name']}) {done}")


@node_app.command()
def pause(node_id: NodeId, as_json: JsonOpt = False) -> None:
    """Stop placing jobs here; guest jobs are preempted (owner first)."""
    _act(node_id, "pause", "paused: guest jobs are preempted and no new ones start until 'coop node resume'", as_json)


@node_app.command()
def resume(node_id: NodeId, as_json: JsonOpt = False) -> None:
    """Take jobs again after a pause."""
    _act(node_id, "resume", "resumed: it takes jobs again", as_json)


@node_app.command()
def drain(node_id: NodeId, as_json: JsonOpt = False) -> None:
    """Let running jobs finish but start no new ones (before maintenance)."""
    _act(node_id, "drain", "draining: running jobs finish, no new ones start", as_json)


@node_app.command()
def undrain(node_id: NodeId, as_json: JsonOpt = False) -> None:
    """Take new jobs again after a drain."""
    _act(node_id, "undrain", "undrained: it takes new jobs again", as_json)


@node_app.command("remove")
def remove_command(node_id: NodeId, force: ForceOpt = False, as_json: JsonOpt = False) -> None:
    """Retire one of your nodes (an admin: any): no jobs, no alerts, not listed; its ledger history
    stays and its agent is told to stop. Refused while jobs run there, unless --force."""
    remove(node_id, force, as_json)


def remove(node_id: int, force: bool, as_json: bool) -> None:
    with config.client() as client:
        node = client.request("POST", f"/nodes/{node_id}/remove", params={"force": "true"} if force else None)
    if as_json:
        output.print_json(node)
        return
    requeued = node.get("requeued_jobs") or []
    output.say(
        f"Removed node {node['id']} ({node['name']}, {node['member']}): it takes no jobs, raises no alerts and "
        "is listed only by 'coop nodes --retired'; its ledger history stays, and its agent is told to stop."
    )
    if requeued:
        output.say(
            f"Jobs {', '.join(str(j) for j in requeued)} ran there: they are requeued, as for a lost node, "
            "within a scheduler pass."
        )
