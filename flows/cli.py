"""The `ovrsis` command: one entry point over the pipeline stages, the build flow and the audit.

Sub-commands import their packages lazily, so `ovrsis categories` does not pay for importing
Prefect, and the dependency direction (taxonomy <- pipeline <- flows) holds.
"""

from __future__ import annotations

import typer

from audit import cli as audit_cli
from flows import commands
from pipeline.cli import commands as pipeline_cli
from pipeline.cli.terminal import run_command
from pipeline.export import cli as export_cli
from pipeline.models import cli as models_cli

app = typer.Typer(
    name="ovrsis",
    help="Build OVRSIS95K-style open-vocabulary remote-sensing segmentation datasets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Build OVRSIS95K-style open-vocabulary remote-sensing segmentation datasets."""


# each CLI module exports a Typer `app`; those without a name add their commands to the top level
app.add_typer(pipeline_cli.app)  # categories, annotate
app.add_typer(commands.app)  # build, serve, evaluate-build, shards, cache
app.add_typer(audit_cli.app, name="audit")
# `ovrsis audit round` trains Pi-Seg, which only flows may import beside the ML backend: defined in flows/commands.py
audit_cli.app.command("round")(commands.audit_round)
app.add_typer(export_cli.app, name="export")
app.add_typer(models_cli.app, name="models")


def main() -> None:
    """`ovrsis`: every command inside the one error boundary (pipeline.cli.terminal.run_command)."""
    run_command(app)


if __name__ == "__main__":
    main()
