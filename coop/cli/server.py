"""``coop server``: run the coordinator (the API and its background loops) with uvicorn."""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer

from coop.cli import output
from coop.cli.output import UserError

app = typer.Typer()


def bootstrap_hint(overrides: Mapping[str, object]) -> str:
    """The exact bootstrap command: it must see the same database as this server."""
    env = " ".join(
        f"COOP_{k.upper()}={shlex.quote(str(v))}" for k, v in overrides.items() if k in ("data_dir", "database_url")
    )
    return (
        "No admin exists yet. In another shell on this host, create the first one with:\n"
        f"    {env + ' ' if env else ''}coop admin bootstrap"
    )


@app.command()
def server(
    host: Annotated[str | None, typer.Option(help="Address to listen on (else COOP_HOST, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (else COOP_PORT, 8470).")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="SQLite file, workdirs and logs (else COOP_DATA_DIR, ./.coop-data).")
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL, e.g. postgresql+psycopg://… (else COOP_DATABASE_URL, SQLite in data dir)."),
    ] = None,
    access_log: Annotated[bool, typer.Option(help="Log every HTTP request (costly at high request rates).")] = False,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="Worker processes; more than one spreads HTTP work over cores.")
    ] = 1,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            envvar="COOP_TLS_CERT",
            exists=True,
            dir_okay=False,
            help="Serve HTTPS with this PEM certificate chain (else plain HTTP: put a reverse proxy in front, "
            "docs/deploy.md).",
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(envvar="COOP_TLS_KEY", exists=True, dir_okay=False, help="The certificate's PEM private key."),
    ] = None,
) -> None:
    """Run the coordinator. Flags override the COOP_* environment variables."""
    import uvicorn
    from sqlalchemy.exc import SQLAlchemyError
    from sqlmodel import Session

    from coop.server.app import create_app
    from coop.server.config import load_settings
    from coop.server.services import accounts

    overrides = {
        k: v
        for k, v in {"host": host, "port": port, "data_dir": data_dir, "database_url": database_url}.items()
        if v is not None
    }
    settings = load_settings(**overrides)
    if (tls_cert is None) != (tls_key is None):
        raise UserError(
            "--tls-cert and --tls-key go together",
            field="--tls-key" if tls_key is None else "--tls-cert",
            fix="give both (COOP_TLS_CERT and COOP_TLS_KEY), or neither for plain HTTP",
        )
    tls = bool(tls_cert and tls_key)
    certfile, keyfile = (str(tls_cert), str(tls_key)) if tls else (None, None)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    try:
        coordinator = create_app(settings)
        with Session(coordinator.state.engine) as session:
            empty = not accounts.has_admin(session)
    except SQLAlchemyError as exc:
        raise UserError(
            f"cannot open the database: {exc.__class__.__name__}: {exc.args[0] if exc.args else ''}",
            field="--database-url",
            fix="check COOP_DATABASE_URL / --database-url and that the database server is running",
        ) from None
    url = f"{'https' if tls else 'http'}://{settings.host}:{settings.port}"
    database = coordinator.state.engine.url.render_as_string(hide_password=True)
    output.say(
        f"Coop coordinator\n  data:     {settings.data_dir.resolve()}\n  database: {database}\n"
        f"  API:      {url}/v1\n  docs:     {url}/docs"
    )
    if empty:
        output.say(bootstrap_hint(overrides))
    if workers == 1:
        uvicorn.run(
            coordinator,
            host=settings.host,
            port=settings.port,
            log_level="info",
            access_log=access_log,
            ssl_certfile=certfile,
            ssl_keyfile=keyfile,
        )
        return
    # each worker process builds its own app from the same COOP_* settings
    os.environ.update({f"COOP_{k.upper()}": str(v) for k, v in overrides.items()})
    coordinator.state.engine.dispose()
    uvicorn.run(
        "coop.server.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        log_level="info",
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
    )
