"""`connecto db ...`: the embedded server and the data databases."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from connecto.db.admin import describe_server
from connecto.db.client import connect, resolve_uri
from connecto.db.server import LocalServer
from connecto.settings import load_settings, redact_uri

app = typer.Typer(
    help="MongoDB: the embedded local server, imports, stats, exports.", no_args_is_help=True
)
console = Console()


@app.command()
def up() -> None:
    """Start the embedded MongoDB-compatible server (data under the data directory)."""
    settings = load_settings()
    state, started = LocalServer(settings.data_dir).start()
    verb = "started" if started else "already running"
    typer.echo(
        f"embedded MongoDB server {verb} at {state.uri} (pid {state.pid}, "
        f"data in {settings.data_dir / 'mongo'})"
    )
    if settings.mongo_uri:
        typer.echo(
            f"note: CONNECTO_MONGO_URI is set ({redact_uri(settings.mongo_uri)}); "
            "connecto uses that server, not this one"
        )


@app.command()
def down() -> None:
    """Stop the embedded server; its data stays for the next `db up`."""
    settings = load_settings()
    stopped = LocalServer(settings.data_dir).stop()
    typer.echo(
        "embedded MongoDB server stopped" if stopped else "embedded MongoDB server was not running"
    )


@app.command()
def status() -> None:
    """Show the server connecto uses: URI, version, databases and collection counts."""
    settings = load_settings()
    if not settings.mongo_uri and LocalServer(settings.data_dir).state() is None:
        typer.echo(
            "embedded MongoDB server: not running (`connecto db up` starts it; "
            "any command that needs it starts it too)"
        )
        raise typer.Exit(0)
    uri = resolve_uri(settings)
    client = connect(uri, settings.mongo_timeout_s)
    described = describe_server(client)
    kind = "configured" if settings.mongo_uri else "embedded"
    typer.echo(f"server: {redact_uri(uri)} ({kind}), version {described['version']}")
    table = Table("database", "collection", "documents")
    for name, collections in described["databases"].items():
        for collection, count in collections.items() or [("(empty)", 0)]:
            table.add_row(name, collection, str(count))
    console.print(table)
