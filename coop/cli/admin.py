"""``coop admin …``: the first admin, members, quotas, grants and tokens.

``bootstrap`` is the one command that talks to the database directly (there is no admin token yet
to talk to the API with), so it runs on the coordinator's host with the coordinator's ``COOP_*``
settings. Everything else goes through the API with an admin token.
"""

from __future__ import annotations

import socket
from typing import Annotated, Any

import typer

from coop.cli import backup, config, nodes, output, pools
from coop.cli.output import UserError
from coop.spec import parse_size_gb

app = typer.Typer(
    name="admin", help="Cooperative administration (admin token needed, except bootstrap).", no_args_is_help=True
)
member_app = typer.Typer(help="Add and list members.", no_args_is_help=True)
quota_app = typer.Typer(help="Fair-share weights and GPU caps.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens for users and agents.", no_args_is_help=True)
node_app = typer.Typer(
    help="Admit agents' machines: approve (Ray token and jobs), revoke (no new jobs), remove (retire).",
    no_args_is_help=True,
)
app.add_typer(member_app, name="member")
app.add_typer(quota_app, name="quota")
app.add_typer(token_app, name="token")
app.add_typer(node_app, name="node")
app.add_typer(pools.app, name="pool")
backup.register(app)  # coop admin backup, coop admin restore (local: on the coordinator's host)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _public_url(host: str, port: int) -> str:
    """The URL to give users: a wildcard bind address means "this machine", so name it."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _create_first_admin(name: str) -> tuple[str | None, str, str]:
    """(token, or None when an admin exists; the coordinator's URL; the database, password hidden)."""
    from pydantic import ValidationError
    from sqlalchemy.exc import SQLAlchemyError
    from sqlmodel import Session

    from coop.server import db
    from coop.server.config import load_settings
    from coop.server.services import accounts
    from coop.server.services.errors import DomainError

    settings = load_settings()
    engine = db.make_engine(settings.resolved_database_url)
    where = engine.url.render_as_string(hide_password=True)
    try:
        db.upgrade(engine)
        with Session(engine) as session:
            token = accounts.bootstrap_admin(session, name)
    except ValidationError:
        raise UserError(
            f"{name!r} is not a valid member name",
            field="--name",
            fix="use letters, digits, '.', '_' or '-', starting with a letter or digit",
        ) from None
    except DomainError as exc:
        raise UserError(exc.message, field=exc.field, fix=exc.fix) from None
    except SQLAlchemyError as exc:
        raise UserError(
            f"cannot use the database {where}: {exc.__class__.__name__}: {exc.args[0] if exc.args else ''}",
            fix="run this on the coordinator's host with its COOP_DATA_DIR / COOP_DATABASE_URL",
        ) from None
    finally:
        engine.dispose()
    return token, _public_url(settings.host, settings.port), where


@app.command()
def bootstrap(
    name: Annotated[str, typer.Option(help="Name of the first admin member and user.")] = "admin",
    as_json: JsonOpt = False,
) -> None:
    """Create the first admin and print its token (run on the coordinator's host, once)."""
    token, url, database = _create_first_admin(name)
    if token is None:
        raise UserError(
            "an admin already exists; bootstrap only creates the first one",
            fix="log in as an admin and run 'coop admin token create' for another token, or "
            "'coop admin member add NAME --admin' for another admin",
        )
    if as_json:
        output.print_json({"member": name, "user": name, "token": token, "url": url})
        return
    output.say(
        f"Created the first admin, {name!r}, in {database}.\n"
        f"Its token (shown once; Coop keeps only a hash):\n\n    {token}\n\n"
        "Next steps, on your laptop:\n"
        f"    coop login --url {url} --token {token}\n"
        "    coop admin member add alice                    # a member and its first token\n"
        "    coop admin token create --agent --member alice # for 'coop-agent join' on a donor"
    )


# --- members ------------------------------------------------------------------------------------


@member_app.command("add")
def member_add(
    name: Annotated[str, typer.Argument(help="Member name (also its first user's name).")],
    share: Annotated[float, typer.Option(help="Fair-share weight (2 = twice the default).")] = 1.0,
    gpu_cap: Annotated[int | None, typer.Option(help="Most GPUs it may use at once. Default: no cap.")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="Its first user is an admin.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Add a member and print its first user's token (once)."""
    with config.client() as client:
        created = client.create_member(name, share=share, gpu_cap=gpu_cap, admin=admin)
        url = client.url
    if as_json:
        output.print_json(created)
        return
    cap = "no GPU cap" if created["gpu_cap"] is None else f"at most {created['gpu_cap']} GPUs"
    output.say(
        f"Added member {created['name']} (share {created['share']:g}, {cap}).\n"
        f"Token for user {created['name']} (shown once):\n\n    {created['token']}\n\n"
        f"They log in with: coop login --url {url} --token {created['token']}"
    )


@member_app.command("list")
def member_list(as_json: JsonOpt = False) -> None:
    """List members with their share, GPU cap and credit balance."""
    with config.client() as client:
        members = client.members()
    if as_json:
        output.print_json(members)
        return
    rows = [
        (
            m["id"],
            m["name"],
            f"{m['share']:g}",
            "-" if m["gpu_cap"] is None else m["gpu_cap"],
            output.credits(m["balance"]),
            output.ago(m["created_at"]),
        )
        for m in members
    ]
    output.show(output.table(("ID", "NAME", "SHARE", "GPU CAP", "BALANCE", "CREATED"), rows))


# --- quotas and grants --------------------------------------------------------------------------


@quota_app.command("set")
def quota_set(
    member: Annotated[str, typer.Argument(help="The member to change.")],
    share: Annotated[float | None, typer.Option(help="New fair-share weight.")] = None,
    gpu_cap: Annotated[int | None, typer.Option(help="New cap on GPUs used at once.")] = None,
    no_gpu_cap: Annotated[bool, typer.Option("--no-gpu-cap", help="Remove the GPU cap.")] = False,
    storage: Annotated[
        str | None,
        typer.Option(help="Artifact store quota, e.g. 200GB or 1.5TB; 'default' for the coordinator's."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a member's fair-share weight, GPU cap and storage quota."""
    if gpu_cap is not None and no_gpu_cap:
        raise UserError("--gpu-cap and --no-gpu-cap exclude each other", field="--gpu-cap", fix="give one of them")
    fields: dict[str, Any] = {} if share is None else {"share": share}
    if gpu_cap is not None or no_gpu_cap:
        fields["gpu_cap"] = gpu_cap
    if storage is not None:
        fields["storage_bytes"] = _storage_bytes(storage)
    if not fields:
        raise UserError("nothing to change", fix="give --share, --gpu-cap N, --no-gpu-cap or --storage SIZE")
    with config.client() as client:
        updated = client.set_quota(member, **fields)
    if as_json:
        output.print_json(updated)
        return
    cap = "no GPU cap" if updated["gpu_cap"] is None else f"at most {updated['gpu_cap']} GPUs"
    quota = updated.get("storage_bytes")
    stored = "the default storage quota" if quota is None else f"{output.size(quota, 1000)} of storage"
    output.say(f"{updated['name']}: share {updated['share']:g}, {cap}, {stored}")


def _storage_bytes(text: str) -> int | None:
    if text.strip().lower() == "default":
        return None
    try:
        return round(parse_size_gb(text) * 10**9)
    except ValueError as exc:
        raise UserError(str(exc), field="--storage", fix="give a size such as 200GB, 1.5TB or 'default'") from None


@app.command(context_settings={"ignore_unknown_options": True})  # so that -5 is an amount
def grant(
    member: Annotated[str, typer.Argument(help="Who receives the credit.")],
    amount: Annotated[float, typer.Argument(help="Credits; negative to correct a mistake.")],
    note: Annotated[str, typer.Option(help="Why, for the ledger.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Grant credits to a member (a ledger entry anyone can audit)."""
    with config.client() as client:
        entry = client.grant(member, amount, note)
        balance = client.balance(member)["balance"]
    if as_json:
        output.print_json({**entry, "member": member, "balance": balance})
        return
    output.say(f"Granted {output.credits(entry['amount'])} credits to {member}; balance now {output.credits(balance)}")


# --- tokens -------------------------------------------------------------------------------------


@token_app.command("create")
def token_create(
    member: Annotated[str | None, typer.Option(help="The token's member. Default: yours.")] = None,
    user: Annotated[str | None, typer.Option(help="User tokens: which user. Default: the member's first.")] = None,
    agent: Annotated[bool, typer.Option("--agent", help="An agent token, for 'coop-agent join'.")] = False,
    name: Annotated[str, typer.Option(help="A label, e.g. the machine it is for.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Create a user or agent token and print it (once)."""
    with config.client() as client:
        created = client.create_token(kind="agent" if agent else "user", member=member, user=user, name=name)
        url = client.url
    if as_json:
        output.print_json(created)
        return
    owner = created["member"] + (f"/{created['user']}" if created["user"] else "")
    use = (
        f"coop-agent join --coordinator {url} --token {created['token']}"
        if agent
        else f"coop login --url {url} --token {created['token']}"
    )
    then = "\nThen approve its node once it registers: coop admin node approve ID (see 'coop nodes')" if agent else ""
    output.say(
        f"Created {created['kind']} token {created['id']} for {owner} (shown once):\n\n"
        f"    {created['token']}\n\nUse it with: {use}{then}"
    )


@token_app.command("list")
def token_list(as_json: JsonOpt = False) -> None:
    """List tokens (their prefixes; the secrets are never stored)."""
    with config.client() as client:
        tokens = client.tokens()
    if as_json:
        output.print_json(tokens)
        return
    rows = [
        (
            t["id"],
            t["prefix"],
            t["kind"],
            t["member"],
            t["user"] or "",
            t["name"],
            output.ago(t["created_at"]),
            output.ago(t["revoked_at"]) if t["revoked_at"] else "",
        )
        for t in tokens
    ]
    output.show(output.table(("ID", "PREFIX", "KIND", "MEMBER", "USER", "NAME", "CREATED", "REVOKED"), rows))


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(help="Token ID, from 'coop admin token list'.")],
    as_json: JsonOpt = False,
) -> None:
    """Revoke a token: it stops working at once."""
    with config.client() as client:
        revoked = client.revoke_token(token_id)
    if as_json:
        output.print_json(revoked)
    else:
        output.say(f"Revoked token {revoked['id']} ({revoked['prefix']}…) of {revoked['member']}")


# --- nodes --------------------------------------------------------------------------------------

NodeIdArg = Annotated[int, typer.Argument(help="Node ID, as listed by 'coop nodes'.")]


@node_app.command("approve")
def node_approve(node_id: NodeIdArg, as_json: JsonOpt = False) -> None:
    """Admit a node: its agent gets the Ray address and token at its next registration (within a
    heartbeat), and jobs are placed on it."""
    with config.client() as client:
        node = client.approve_node(node_id)
    if as_json:
        output.print_json(node)
        return
    output.say(
        f"Approved node {node['id']} ({node['name']}, {node['member']}): its agent joins the Ray cluster "
        "at its next heartbeat and jobs are placed on it."
    )


@node_app.command("revoke")
def node_revoke(node_id: NodeIdArg, as_json: JsonOpt = False) -> None:
    """Withdraw a node's approval: no new jobs start on it, and its agent gets no Ray token when it
    registers again. Running jobs go on, and the Ray token it holds stays valid until you rotate it."""
    with config.client() as client:
        node = client.revoke_node(node_id)
    if as_json:
        output.print_json(node)
        return
    output.say(
        f"Revoked node {node['id']} ({node['name']}, {node['member']}): no new jobs start on it and it gets no "
        "Ray token when it registers again.\n"
        "Jobs running there go on ('coop cancel' them), and the Ray token its agent already holds stays valid: "
        "rotate the cluster's Ray token (COOP_RAY_AUTH_TOKEN and the head's RAY_AUTH_TOKEN) to shut it out of Ray."
    )


@node_app.command("remove")
def node_remove(node_id: NodeIdArg, force: nodes.ForceOpt = False, as_json: JsonOpt = False) -> None:
    """Retire a node (a dead machine, one gone for good): it takes no jobs, leaves 'coop nodes' and the
    metrics (CoopNodeDown stops), and its agent is refused; its ledger history stays. Refused while
    jobs run there, unless --force. A donor may remove its own nodes ('coop node remove')."""
    nodes.remove(node_id, force, as_json)


# --- foreign Ray work ---------------------------------------------------------------------------


@app.command("foreign")
def foreign(
    gone: Annotated[bool, typer.Option("--gone", help="Also what is no longer running.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Work on the Ray cluster that Coop did not start (Ray jobs, actors, tasks), with where it runs."""
    with config.client() as client:
        rows = client.foreign_work(gone=gone)
    if as_json:
        output.print_json(rows)
        return
    if not rows:
        output.say("No foreign Ray work seen" + (" yet." if gone else " in the last check."))
        return
    table = [
        (r["node"], r["kind"], r["ray_id"], r["name"], output.ago(r["first_seen"]), output.ago(r["gone_at"]))
        for r in rows
    ]
    output.show(output.table(("NODE", "KIND", "RAY ID", "WHAT", "FIRST SEEN", "GONE"), table))
