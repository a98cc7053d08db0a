"""`connecto config ...`: effective settings and synister INI conversion."""

from __future__ import annotations

from pathlib import Path

import typer

from connecto import ConnectoError
from connecto.config import to_toml
from connecto.settings import load_settings, settings_files
from connecto.tasks.synapse_classification.config import convert_ini

app = typer.Typer(help="Settings and config files.", no_args_is_help=True)


@app.command()
def show() -> None:
    """Print the effective settings (passwords redacted) and where they come from."""
    settings = load_settings()
    for key, value in settings.redacted().items():
        typer.echo(f"{key} = {value if value is not None else '(unset)'}")
    typer.echo(
        "# precedence: CONNECTO_* environment > "
        + " > ".join(f"{p}{'' if p.exists() else ' (absent)'}" for p in reversed(settings_files()))
        + " > defaults"
    )


@app.command()
def convert(
    ini_file: Path = typer.Argument(..., help="synister train/worker/predict_config.ini"),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="TOML file to write (default: beside the INI, .toml)"
    ),
    force: bool = typer.Option(False, "--force", help="overwrite an existing TOML file"),
) -> None:
    """Convert a synister INI config into connecto's TOML."""
    config, stem = convert_ini(ini_file)
    target = output or ini_file.with_suffix(".toml")
    if target.exists() and not force:
        raise ConnectoError(f"{target} exists; use --force to overwrite")
    target.write_text(to_toml(config))
    typer.echo(f"wrote {target} ({stem})")
