"""The `connecto` command: a thin Typer front end over the `connecto` library."""

from __future__ import annotations

import sys

import typer

from cli import bootstrap as bootstrap_cli
from cli import config as config_cli
from cli import data as data_cli
from cli import db as db_cli
from cli import detect as detect_cli
from cli import embed as embed_cli
from cli import evaluate as evaluate_cli
from cli import experiment as experiment_cli
from cli import jobs as jobs_cli
from cli import predict as predict_cli
from cli import report as report_cli
from cli import segment as segment_cli
from cli import split as split_cli
from cli import submit as submit_cli
from cli import train as train_cli
from cli import view as view_cli
from connecto import ConnectoError, __version__

app = typer.Typer(
    name="connecto",
    help="Connectomics machine learning: experiments, training, prediction and "
    "segment graphs, all tracked in MongoDB.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(db_cli.app, name="db")
app.add_typer(config_cli.app, name="config")
# In the order users work: prepare, train, predict, evaluate, segment, submit.
for module in (
    experiment_cli,
    split_cli,
    data_cli,
    train_cli,
    view_cli,
    predict_cli,
    evaluate_cli,
    detect_cli,
    embed_cli,
    segment_cli,
    bootstrap_cli,
    submit_cli,
    jobs_cli,
    report_cli,
):
    module.register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"connecto {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """connecto"""


def main() -> None:
    try:
        # standalone_mode=False returns the exit code of typer.Exit instead of raising
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except ConnectoError as error:
        typer.echo(f"connecto: error: {error}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("connecto: interrupted", err=True)
        sys.exit(130)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as error:
        # usage errors (bad option, missing argument) carry their own message and code
        if hasattr(error, "show") and hasattr(error, "exit_code"):
            error.show()
            sys.exit(error.exit_code)
        from connecto.db.client import server_failure

        message = server_failure(error)
        if message is None:
            raise
        typer.echo(f"connecto: error: {message}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
