"""`ovrsis audit ...`: a Label Studio review session from the command line."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

from audit.settings import AuditError

console = Console(stderr=True, soft_wrap=True)  # long paths and messages stay on one line
app = typer.Typer(help="Human audit in Label Studio: server, push, pull, stats.", no_args_is_help=True)

RECORDS = typer.Option(..., "--records", "-r", help="Build (or `ovrsis annotate`) output folder with records.jsonl.")


def _fail(error: Exception) -> None:
    console.print(f"[red]error:[/red] {error}")
    raise typer.Exit(2)


def _title(records: Path, project: str | None) -> str:
    return project or f"ovrsis audit: {records.resolve().name}"


@app.command()
def server(
    root: Path = typer.Option(..., help="Folder served to the browser (the build output folder, or above it)."),
    port: int = typer.Option(8089, help="Port on 127.0.0.1."),
    data: Path = typer.Option(Path(".lsdata"), help="Label Studio's data folder (SQLite database, uploads)."),
    stop: bool = typer.Option(False, "--stop", help="Stop the server started from this data folder."),
) -> None:
    """Start a local Label Studio (from .venv-ls) and wait until it is healthy. The admin user and API
    token come from LABEL_STUDIO_USERNAME / LABEL_STUDIO_PASSWORD / LABEL_STUDIO_USER_TOKEN (environment or .env)."""
    from audit.server import start_server, stop_server
    from audit.settings import read_dotenv

    pid_file = data / "label-studio.pid"
    if stop:
        if not pid_file.is_file():
            _fail(AuditError(f"no {pid_file}: nothing to stop"))
        stop_server(int(pid_file.read_text()))
        pid_file.unlink()
        console.print("Label Studio stopped")
        return
    env = read_dotenv() | {k: v for k, v in os.environ.items() if k.startswith("LABEL_STUDIO_")}
    try:
        token, password = env.get("LABEL_STUDIO_USER_TOKEN"), env.get("LABEL_STUDIO_PASSWORD")
        if not token or not password:
            raise AuditError("set LABEL_STUDIO_USER_TOKEN (40 hex chars) and LABEL_STUDIO_PASSWORD in the environment or .env")
        started = start_server(data, root, token, env.get("LABEL_STUDIO_USERNAME", "admin@example.com"), password, port)
    except AuditError as error:
        _fail(error)
    console.print(f"Label Studio at {started.url} (pid {started.pid}, log {started.log}); stop with `ovrsis audit server --stop`")


@app.command()
def push(
    records: Path = RECORDS,
    sample: int = typer.Option(100, min=1, help="Tiles in the random review queue."),
    seed: int = typer.Option(0, help="Sampling seed (the same seed gives the same sample)."),
    strata: str = typer.Option("domain", help="Stratify the sample by: domain | none."),
    uncertain: int = typer.Option(0, min=0, help="Also queue this many least-certain tiles in a second project."),
    project: str | None = typer.Option(None, help="Project title [ovrsis audit: <records folder name>]."),
    root: Path | None = typer.Option(None, help="The server's served root [the records folder]."),
    url: str | None = typer.Option(None, help="Label Studio URL [LABEL_STUDIO_URL or http://127.0.0.1:8089]."),
) -> None:
    """Push a domain-stratified, seeded sample of tiles (and optionally the uncertain ones) for review."""
    from audit.client import AuditClient
    from audit.queue import load_live_records, push as push_tasks, stratified_sample, uncertain_sample
    from audit.settings import server_settings
    from taxonomy.loader import load_taxonomy

    try:
        client = AuditClient(server_settings(url))
        client.check()
        live = load_live_records(records)
        taxonomy = load_taxonomy(live[0].provenance.get("taxonomy", {}).get("name", "ovrsis95k")) if live else None
        if taxonomy is None:
            raise AuditError(f"{records}: no annotated tile to review")
        queues = [(_title(records, project), stratified_sample(live, sample, seed, strata), "sample")]
        if uncertain:
            queues.append((_title(records, project) + " (uncertain)", uncertain_sample(live, uncertain), "uncertain"))
        for title, chosen, queue in queues:
            summary = push_tasks(client, records, taxonomy, chosen, title, root or records, queue)
            console.print(f"{title!r} (project {summary.project_id}): {summary.created} task(s) created, "
                          f"{summary.already_there} already there")  # fmt: skip
    except AuditError as error:
        _fail(error)


@app.command()
def pull(
    records: Path = RECORDS,
    project: str | None = typer.Option(None, help="Project title [ovrsis audit: <records folder name>]."),
    url: str | None = typer.Option(None, help="Label Studio URL."),
) -> None:
    """Export the reviews (kept as a timestamped JSON) and apply them to the records and masks."""
    from audit.apply import find_project, pull as pull_reviews
    from audit.client import AuditClient
    from audit.queue import load_live_records
    from audit.settings import server_settings
    from taxonomy.loader import load_taxonomy

    try:
        client = AuditClient(server_settings(url))
        client.check()
        live = load_live_records(records)
        taxonomy = load_taxonomy(live[0].provenance.get("taxonomy", {}).get("name", "ovrsis95k"))
        titles = [_title(records, project)]
        if project is None:
            titles.append(titles[0] + " (uncertain)")
        for title in titles:
            try:
                project_id = find_project(client, title)
            except AuditError:
                if title != titles[0]:
                    continue
                raise
            summary = pull_reviews(client, project_id, records, taxonomy)
            states = ", ".join(f"{k} {v}" for k, v in sorted(summary.states.items())) or "none"
            console.print(f"{title!r}: {summary.reviewed} reviewed, {summary.pending} pending of {summary.tasks} tasks "
                          f"({states}); export kept at {summary.export}")  # fmt: skip
            for problem in summary.problems:
                console.print(f"[yellow]warning:[/yellow] {problem}")
            if summary.unknown_keys:
                console.print(f"[yellow]warning:[/yellow] {len(summary.unknown_keys)} task(s) name tiles not in the records")
    except AuditError as error:
        _fail(error)


@app.command()
def stats(records: Path = RECORDS, report: Path = typer.Option(..., help="Folder for the report.")) -> None:
    """Table II (and per category, per domain, IoU, whole-dataset estimate) as Markdown, JSON and PNG."""
    from audit.records import load_records
    from audit.stats import write_report

    try:
        payload = write_report(load_records(records), report)
    except AuditError as error:
        _fail(error)
    table = payload["table"]
    console.print(f"{table['audited images']} audited images; category accepted {table['category accepted']['rate']}, "
                  f"discarded {table['category discarded']['rate']}; report in {report / 'audit_stats.md'}")  # fmt: skip
