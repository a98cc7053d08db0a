"""`connecto db ...`: the embedded server and the data databases."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from connecto.db.admin import (
    add_user,
    read_new_password,
    server_status,
    start_embedded,
    stop_embedded,
    write_credentials,
)
from connecto.db.client import get_database
from connecto.db.import_journal import recover_imports
from connecto.db.schema import init_database
from connecto.db.synapse_import import import_csv, import_synister
from connecto.db.synapse_readers import parse_voxel_size
from connecto.db.synapses import PARTS, export_synister, synapse_stats

app = typer.Typer(
    help="MongoDB: the embedded local server, imports, stats, exports.", no_args_is_help=True
)
console = Console()


@app.command()
def up() -> None:
    """Start the embedded MongoDB-compatible server (data under the data directory)."""
    server = start_embedded()
    verb = "started" if server.started else "already running"
    typer.echo(
        f"embedded MongoDB server {verb} at {server.uri} (pid {server.pid}, data in {server.data})"
    )
    if server.overridden_by:
        typer.echo(f"note: {server.overridden_by}; connecto uses that server, not this one")


@app.command()
def down() -> None:
    """Stop the embedded server; its data stays for the next `db up`."""
    typer.echo(
        "embedded MongoDB server stopped"
        if stop_embedded()
        else "embedded MongoDB server was not running"
    )


@app.command()
def status() -> None:
    """Show the server connecto uses: URI, version, databases and collection counts."""
    server = server_status()
    if server.uri is None:
        typer.echo(
            "embedded MongoDB server: not running (`connecto db up` starts it; "
            "any command that needs it starts it too)"
        )
        return
    typer.echo(f"server: {server.uri} ({server.kind}), version {server.version}")
    table = Table("database", "collection", "documents")
    for name, collections in server.databases.items():
        for collection, count in collections.items() or [("(empty)", 0)]:
            table.add_row(name, collection, str(count))
    console.print(table)


import_app = typer.Typer(
    help="Import synapses, skeletons and hemilineages (validated, all-or-nothing).",
    no_args_is_help=True,
)
app.add_typer(import_app, name="import")

DB_OPTION = typer.Option(..., "--db", help="Data database name, e.g. synister_v3.")
REPLACE_OPTION = typer.Option(
    False, "--replace", help="Overwrite documents that differ from the database."
)


@app.command("init")
def init_command(db: str = DB_OPTION) -> None:
    """Apply the validators and indexes of mongo/ to a data database (idempotent)."""
    init_database(get_database(db))
    typer.echo(f"database {db}: validators and indexes applied")


@import_app.command("synister")
def import_synister_command(
    directory: Path = typer.Argument(
        ..., help="Folder of synapses*/skeletons*/hemi_lineages*.json"
    ),
    db: str = DB_OPTION,
    replace: bool = REPLACE_OPTION,
) -> None:
    """Import synister JSON exports (lists of documents or objects keyed by id)."""
    report = import_synister(get_database(db), directory, replace=replace)
    typer.echo(f"database {db}: {report.summary()}")


@import_app.command("csv")
def import_csv_command(
    files: list[Path] = typer.Argument(..., help="CSV tables with body,x,y,z[,conf],syn_id"),
    db: str = DB_OPTION,
    voxel_size: str = typer.Option(
        ..., "--voxel-size", help="Z,Y,X nm per voxel of the CSV coordinates, e.g. 8,8,8."
    ),
    nt: str | None = typer.Option(None, "--nt", help="Transmitter of every body in the files."),
    nt_from_filename: bool = typer.Option(
        False, "--nt-from-filename", help="Transmitter = file name stem (gaba.csv -> gaba)."
    ),
    class_column: str | None = typer.Option(
        None,
        "--class-column",
        help="Column holding each synapse's own class (stored as its label); "
        "one body may hold several classes.",
    ),
    class_from_filename: bool = typer.Option(
        False,
        "--class-from-filename",
        help="Class of every synapse = file name stem (background.csv -> background).",
    ),
    replace: bool = REPLACE_OPTION,
) -> None:
    """Import CSV synapse tables; each body becomes a skeleton, coordinates become nm.

    A transmitter (--nt, --nt-from-filename) belongs to a whole body; a class
    (--class-column, --class-from-filename) to each synapse."""
    report = import_csv(
        get_database(db),
        files,
        parse_voxel_size(voxel_size),
        nt=nt,
        nt_from_filename=nt_from_filename,
        replace=replace,
        class_column=class_column,
        class_from_filename=class_from_filename,
    )
    typer.echo(f"database {db}: {report.summary()}")


@app.command("stats")
def stats_command(db: str = DB_OPTION) -> None:
    """Synapse and skeleton counts per class (transmitter or synapse label), per split and
    part, per brain region."""
    stats = synapse_stats(get_database(db))
    _report_recovery(stats["rolled_back"], stats["unfinished"])
    typer.echo(
        f"database {db}: {stats['synapses']} synapses, {stats['skeletons']} skeletons, "
        f"{stats['hemi_lineages']} hemilineages"
    )
    if stats["class_kind"] == "transmitter":
        table = Table("transmitter", "synapses", "skeletons", "skeletons with synapses")
        for name, row in stats["classes"].items():
            table.add_row(
                name,
                str(row["synapses"]),
                str(row["skeletons"]),
                str(row["skeletons_with_synapses"]),
            )
    else:
        labelled = stats["labelled_synapses"]
        typer.echo(
            "every synapse has its own class (label)"
            if labelled == stats["synapses"]
            else f"{labelled} synapses have their own class (label); "
            "the others take their skeleton's transmitter"
        )
        table = Table("class", "synapses", "skeletons with synapses")
        for name, row in stats["classes"].items():
            if row["synapses"]:
                table.add_row(name, str(row["synapses"]), str(row["skeletons_with_synapses"]))
    console.print(table)
    if stats["splits"]:
        table = Table("split", *PARTS, "total", title="synapses (skeletons) per split part")
        for name, parts in stats["splits"].items():
            skeletons = stats["split_skeletons"][name]
            table.add_row(
                name,
                *(f"{parts[p]} ({skeletons[p]})" for p in PARTS),
                f"{sum(parts.values())} ({sum(skeletons.values())})",
            )
        console.print(table)
    else:
        typer.echo("no splits yet (`connecto split` makes one)")
    if stats["brain_regions"]:
        table = Table("brain region", "synapses")
        for name, count in stats["brain_regions"].items():
            table.add_row(name, str(count))
        console.print(table)


def _report_recovery(rolled_back: list[str], unfinished: list[str]) -> None:
    for what in rolled_back:
        typer.echo(f"rolled back an import that was cut short: {what}", err=True)
    for what in unfinished:
        typer.echo(
            f"warning: an import is unfinished and its process may still run: {what} "
            "(`connecto db recover --force` rolls it back)",
            err=True,
        )


@app.command("recover")
def recover_command(
    db: str = DB_OPTION,
    force: bool = typer.Option(
        False, "--force", help="Also roll back imports whose process may still run elsewhere."
    ),
) -> None:
    """Roll back imports cut short by a dead server, a full disk or a killed process."""
    rolled_back, unfinished = recover_imports(get_database(db), force=force)
    _report_recovery(rolled_back, unfinished)
    if not rolled_back and not unfinished:
        typer.echo(f"database {db}: no unfinished imports")


@app.command("migrate")
def migrate_command(db: str = DB_OPTION) -> None:
    """Convert a database written in connecto's first layout (`hemilineages`) to
    synister's layout, which connecto now reads and writes; safe to run again."""
    from connecto.db.migrate import migrate

    report = migrate(get_database(db))
    typer.echo(f"database {db}: {report.summary()}")


@app.command("export")
def export_command(
    directory: Path = typer.Argument(..., help="Output folder."),
    db: str = DB_OPTION,
) -> None:
    """Write synister-format JSON (synapses, skeletons, hemi_lineages keyed by id)."""
    counts = export_synister(get_database(db), directory)
    typer.echo(
        f"database {db} -> {directory}: "
        + ", ".join(f"{name} ({count})" for name, count in counts.items())
    )


user_app = typer.Typer(
    help="Users that sign in with a password (synister credentials INIs).", no_args_is_help=True
)
app.add_typer(user_app, name="user")


@user_app.command("add")
def user_add_command(
    name: str = typer.Argument(..., help="User name, as in a credentials INI's `user`."),
    db: list[str] = typer.Option(
        [],
        "--db",
        help="Data database the user reads and writes (repeatable; the tracking database "
        "is added). None: every database.",
    ),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from the first line of stdin."
    ),
    password_env: str | None = typer.Option(
        None, "--password-env", metavar="VAR", help="Read the password from variable VAR."
    ),
    embedded: bool = typer.Option(
        False, "--embedded", help="Create it on the embedded server even when another is set."
    ),
    replace: bool = typer.Option(
        False, "--replace", help="Set the password and roles of an existing user."
    ),
    credentials: Path | None = typer.Option(
        None,
        "--write-credentials",
        help="Also write a synister credentials INI for the user here (mode 0600).",
    ),
) -> None:
    """Create a user (SCRAM) so `mongodb://user:password@host:port` and synister
    credentials INIs sign in; the password comes from a prompt, stdin or a variable."""
    password = read_new_password(password_stdin, password_env)
    user = add_user(name, password, db, embedded=embedded, replace=replace)
    verb = "updated" if user.replaced else "created"
    typer.echo(f"user {user.name} {verb} on {user.server} (roles: {', '.join(user.roles)})")
    if credentials is not None:
        write_credentials(credentials, user, password)
        typer.echo(f"credentials INI written to {credentials} (mode 0600)")
    typer.echo(
        f"a credentials INI for it: [Credentials] user = {user.name}, password = "
        f"(the one given), host = {user.host}, port = {user.port}"
    )
    if user.embedded:
        typer.echo(
            "note: the embedded server checks this password for clients that give one, but "
            "does not require one: clients without credentials keep full access; it keeps "
            f"port {user.port} across restarts while the port is free"
        )
