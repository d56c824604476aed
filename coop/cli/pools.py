"""``coop admin pool …``: HPC allocations (Slurm over SSH) the cooperative runs jobs on.

The SSH key and known_hosts named here are files on the coordinator's host: the coordinator reads
them there; this command sends only their paths.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from coop.cli import config, output
from coop.cli.output import UserError

app = typer.Typer(help="HPC pools: Slurm allocations reached over SSH.", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def parse_gres_map(text: str) -> dict[str, str]:
    """'RTX4090=gpu:rtx4090,A100=gpu:a100' -> {'RTX4090': 'gpu:rtx4090', 'A100': 'gpu:a100'}."""
    out = {}
    for item in (i.strip() for i in text.split(",")):
        model, sep, gres = item.partition("=")
        if not item or not sep or not model.strip() or not gres.strip():
            raise UserError(
                f"{item!r} is not MODEL=GRES",
                field="--gres-map",
                fix="write it as MODEL=gpu:TYPE[,MODEL=gpu:TYPE…], e.g. RTX4090=gpu:rtx4090",
            )
        out[model.strip()] = gres.strip()
    return out


def parse_gpu_info(items: list[str]) -> dict[str, dict[str, float | None]]:
    """'A100=80,8.0,250' (memory GB, compute capability, TFLOP/s) per model."""
    out: dict[str, dict[str, float | None]] = {}
    for item in items:
        model, _, rest = item.partition("=")
        parts = [p.strip().upper().removesuffix("GB") for p in rest.split(",")]
        try:
            memory, cc, tflops = (float(p) if p else None for p in parts)
        except ValueError:
            raise UserError(
                f"{item!r} is not MODEL=MEMORY_GB,COMPUTE_CAPABILITY,TFLOPS",
                field="--gpu-info",
                fix="e.g. --gpu-info A100=80,8.0,250 (an 80 GB A100, 250 TFLOP/s measured)",
            ) from None
        out[model.strip()] = {"memory_gb": memory, "compute_capability": cc, "tflops": tflops}
    return out


def _capacity_rows(classes: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (
            c["name"],
            c["gpus"] or "-",
            c["model"] or "-",
            f"{c['gpu_memory_gb']:g} GB" if c["gpus"] else "-",
            c["gres"] or "-",
            c["cpus"],
            f"{c['memory_gb']:g} GB",
            f"{c['usable']}/{c['nodes']}",
        )
        for c in classes
    ]


CAPACITY_COLUMNS = ("CLASS", "GPUS", "MODEL", "GPU MEM", "GRES", "CPUS", "MEMORY", "NODES UP")


Opt = typer.Option
KeyOpt = Annotated[str, Opt(help="Private key file: a path on the coordinator's host (mode 600).")]
KnownHostsOpt = Annotated[str, Opt(help="known_hosts file on the coordinator's host with the login node's key.")]
GresMapOpt = Annotated[str, Opt(help="GPU models to Slurm GRES: RTX4090=gpu:rtx4090,A100=gpu:a100.")]
PartitionOpt = Annotated[str | None, Opt(help="Partition to submit to. Default: the cluster's default.")]
ScratchOpt = Annotated[str, Opt(help="Where jobs live on the cluster; a relative path is under the user's home.")]
GpuInfoOpt = Annotated[list[str] | None, Opt(help="MODEL=MEMORY_GB,CC,TFLOPS for a GPU model Coop does not know.")]
SbatchOpt = Annotated[list[str] | None, Opt(help="An extra sbatch option for the site, e.g. --constraint=a100.")]
MemberOpt = Annotated[str | None, Opt(help="The member who holds the allocation. Default: you.")]


@app.command("add-slurm")
def add_slurm(
    name: Annotated[str, typer.Argument(help="The pool's name, e.g. the cluster's.")],
    host: Annotated[str, Opt(help="Login node to SSH to.")],
    user: Annotated[str, Opt(help="Account on the login node.")],
    key: KeyOpt,
    known_hosts: KnownHostsOpt,
    gres_map: GresMapOpt = "",
    port: Annotated[int, Opt(help="SSH port.")] = 22,
    partition: PartitionOpt = None,
    account: Annotated[str | None, Opt(help="Slurm account charged (sbatch --account).")] = None,
    qos: Annotated[str | None, Opt(help="Slurm QOS (sbatch --qos).")] = None,
    max_jobs: Annotated[int, Opt(help="Most Coop jobs in the pool at once.")] = 10,
    scratch_dir: ScratchOpt = "coop-scratch",
    gpu_info: GpuInfoOpt = None,
    sbatch_option: SbatchOpt = None,
    member: MemberOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a Slurm allocation as a pool (then check it with 'coop admin pool test NAME')."""
    slurm: dict[str, Any] = {
        "host": host,
        "port": port,
        "user": user,
        "key": key,
        "known_hosts": known_hosts,
        "partition": partition,
        "account": account,
        "qos": qos,
        "scratch_dir": scratch_dir,
        "gres_map": parse_gres_map(gres_map) if gres_map else {},
        "gpu_info": parse_gpu_info(gpu_info or []),
        "sbatch_options": sbatch_option or [],
    }
    body = {"name": name, "member": member, "max_jobs": max_jobs, "slurm": slurm}
    with config.client() as client:
        pool = client.request("POST", "/pools", json=body)
    if as_json:
        output.print_json(pool)
        return
    output.say(
        f"Added pool {pool['name']} ({user}@{host}:{port}, at most {pool['max_jobs']} jobs at once) "
        f"for member {pool['member']}.\nCheck it with: coop admin pool test {pool['name']}"
    )


@app.command("list")
def pool_list(as_json: JsonOpt = False) -> None:
    """List pools: where they are, their state and what they offer."""
    with config.client() as client:
        pools = client.request("GET", "/pools")
    if as_json:
        output.print_json(pools)
        return
    rows = [
        (
            p["name"],
            p["member"],
            f"{p['slurm']['user']}@{p['slurm']['host']}:{p['slurm']['port']}",
            p["slurm"].get("partition") or "(default)",
            p["state"],
            f"{p['running']}/{p['max_jobs']}",
            sum(c["gpus"] * c["nodes"] for c in p["capacity"]),
            output.ago(p["refreshed_at"]) if p["refreshed_at"] else "never",
            p["detail"] or "",
        )
        for p in pools
    ]
    columns = ("NAME", "MEMBER", "LOGIN", "PARTITION", "STATE", "JOBS", "GPUS", "REFRESHED", "DETAIL")
    output.show(output.table(columns, rows))


@app.command("remove")
def pool_remove(name: Annotated[str, typer.Argument(help="The pool to remove.")], as_json: JsonOpt = False) -> None:
    """Remove a pool (refused while Coop jobs run in it); its history stays in the ledger."""
    with config.client() as client:
        pool = client.request("DELETE", f"/pools/{name}")
    if as_json:
        output.print_json(pool)
    else:
        output.say(f"Removed pool {pool['name']}: no new jobs go there.")


@app.command("test")
def pool_test(name: Annotated[str, typer.Argument(help="The pool to test.")], as_json: JsonOpt = False) -> None:
    """Connect (checking the host key), run sinfo, and print what the pool offers."""
    with config.client() as client:
        result = client.request("POST", f"/pools/{name}/test", timeout=120)
    if as_json:
        output.print_json(result)
    elif result["ok"]:
        output.say(f"{result['pool']}: {result['message']} ({result['seconds']:.1f} s)\nhost key: {result['host_key']}")
        output.show(output.table(CAPACITY_COLUMNS, _capacity_rows(result["capacity"])))
    if not result["ok"]:
        raise UserError(f"pool {result['pool']} cannot be used: {result['message']}")
