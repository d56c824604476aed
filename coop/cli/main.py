"""The ``coop`` command: one Typer app, one module per group of commands."""

from __future__ import annotations

import typer

from coop.cli import account, admin, jobs, nodes, pull, server, simulate, up
from coop.cli.output import CoopGroup

app = typer.Typer(
    cls=CoopGroup,
    name="coop",
    help="Coop: share GPUs fairly in a compute cooperative. Start with 'coop login', then 'coop submit job.yaml'.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals hold tokens
)
for module in (jobs, pull, nodes, account, server, up):
    app.add_typer(module.app)
app.add_typer(admin.app, name="admin")
app.add_typer(simulate.app, name="simulate")

if __name__ == "__main__":
    app()
