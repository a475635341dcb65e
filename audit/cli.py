"""`ovrsis audit ...`: a Label Studio review session from the command line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.text import Text

from audit.server import BACKEND_HOST, LS_VENV_ENV, LS_VENV_NAME
from audit.settings import AuditError
from pipeline.cli.terminal import console, fail, set_aside
from pipeline.files.layout import records_file

if TYPE_CHECKING:
    from audit.pull import PullSummary

app = typer.Typer(help="Human audit in Label Studio: server, push, pull, stats.", no_args_is_help=True)

RECORDS = typer.Option(..., "--records", "-r", help="Build (or `ovrsis annotate`) output folder with records.jsonl.")


@app.command()
def server(
    root: Path | None = typer.Option(
        None, help="Folder served to the browser (the build output folder, or above it); needed to start."
    ),
    port: int = typer.Option(8089, help="Port on 127.0.0.1."),
    data: Path = typer.Option(Path(".lsdata"), help="Label Studio's data folder (SQLite database, uploads)."),
    stop: bool = typer.Option(False, "--stop", help="Stop the server (and ML backend) started from this data folder."),
    backend: bool = typer.Option(False, "--backend", help="Also start the ML backend (`ovrsis audit backend`)."),
    backend_port: int = typer.Option(9090, help=f"The ML backend's port on {BACKEND_HOST}."),
    records: Path | None = typer.Option(
        None, "--records", "-r", help="With --backend: the build output folder [--root]."
    ),
    models: str = typer.Option(
        "default", help="With --backend: models configuration of the SAM (default | tiny | YAML)."
    ),
    piseg: Path | None = typer.Option(None, help="With --backend: Pi-Seg checkpoint for tiles without a proposal."),
    venv: Path | None = typer.Option(
        None,
        "--venv",
        show_default=False,
        help=f"Label Studio's venv [{LS_VENV_ENV} if set, else {LS_VENV_NAME} beside the project "
        f"(the folder holding pyproject.toml), else ./{LS_VENV_NAME}].",
    ),
) -> None:
    """Start a local Label Studio and wait until it is healthy. The admin user and API
    token come from LABEL_STUDIO_USERNAME / LABEL_STUDIO_PASSWORD / LABEL_STUDIO_USER_TOKEN (environment or .env).
    Label Studio runs from its own venv, found from any working directory (see --venv).
    With --backend, the ML backend is started beside it (connect it with `ovrsis audit push --backend URL`)."""
    import secrets

    from audit.server import changed_defaults, start_backend, start_server, stop_server
    from audit.settings import read_dotenv

    pid_file, backend_pid = data / "label-studio.pid", data / "ml-backend.pid"
    if stop:
        if not pid_file.is_file() and not backend_pid.is_file():
            fail(f"no {pid_file}: nothing to stop")
        for what, pid in (("Label Studio", pid_file), ("the ML backend", backend_pid)):
            if pid.is_file():
                stop_server(int(pid.read_text()))
                pid.unlink()
                console.print(f"{what} stopped")
        return
    env = read_dotenv() | {k: v for k, v in os.environ.items() if k.startswith("LABEL_STUDIO_")}
    try:
        if root is None:
            raise AuditError(
                "--root is needed to start the server: the folder it serves (the build output folder, or above it)"
            )
        token, password = env.get("LABEL_STUDIO_USER_TOKEN"), env.get("LABEL_STUDIO_PASSWORD")
        if not token or not password:
            raise AuditError(
                "set LABEL_STUDIO_USER_TOKEN (40 hex chars) and LABEL_STUDIO_PASSWORD in the environment or .env"
            )
        started = start_server(
            data, root, token, env.get("LABEL_STUDIO_USERNAME", "admin@example.com"), password, port, venv=venv
        )
        console.print(
            f"Label Studio at {started.url} (pid {started.pid}, log {started.log}); "
            "stop with `ovrsis audit server --stop`"
        )
        console.print("Changed from Label Studio's defaults:", highlight=False)
        for line in changed_defaults(BACKEND_HOST):
            console.print(f"  {line}", markup=False, highlight=False)
        if backend:
            secret = os.environ.get(BACKEND_SECRET_ENV) or env.get(BACKEND_SECRET_ENV)
            generated = not secret
            secret = secret or secrets.token_urlsafe(24)
            ml = start_backend(data, root, records or root, models, secret, piseg, backend_port)
            console.print(
                f"ML backend at {ml.url} (pid {ml.pid}, log {ml.log}); connect it with {BACKEND_SECRET_ENV} set: "
                f"`ovrsis audit push ... --backend {ml.url}`",
                markup=False,
                highlight=False,
            )
            if generated:
                console.print(f"its secret (generated; set {BACKEND_SECRET_ENV} to choose one): {secret}", markup=False)
    except AuditError as error:
        fail(error)


BACKEND_SECRET_ENV = "OVRSIS_BACKEND_SECRET"  # the ML backend's shared secret, for `backend` and `push --backend`


@app.command()
def backend(
    root: Path = typer.Option(
        ..., help="Label Studio's served root (`ovrsis audit server --root`): task images are read from it."
    ),
    records: Path | None = typer.Option(
        None, "--records", "-r", help="Build output folder: proposals for pre-annotation, embedding cache [ROOT]."
    ),
    models: str = typer.Option(
        "default", help="Models configuration whose SAM answers the smart tools (default | tiny | YAML)."
    ),
    piseg: Path | None = typer.Option(
        None, help="Pi-Seg checkpoint: pre-annotations for tasks whose tile has no proposal."
    ),
    port: int = typer.Option(9090, help="Port on --host."),
    host: str = typer.Option(
        BACKEND_HOST,
        help="Loopback address to listen on: its own, the one address `ovrsis audit server` lets Label Studio reach.",
    ),
    warm: bool = typer.Option(
        False, "--warm", help="Embed every pushed tile in the background, before the first click."
    ),
    secret: str | None = typer.Option(
        None,
        "--secret",
        envvar=BACKEND_SECRET_ENV,
        show_default=False,
        help="Shared secret every request but /health must carry (HTTP Basic password or bearer token), "
        "at least 16 characters; without it, a random one is printed at start. Prefer the environment "
        "variable: a command line is visible to all local users.",
    ),
    max_image_mib: int = typer.Option(256, min=1, help="Refuse a task image larger than this many MiB."),
) -> None:
    """Serve Label Studio's ML-backend protocol (/health, /setup, /predict, /webhook) in the foreground:
    SAM masks for the smart tools' clicks and boxes (image embedding cached on disk per tile), and
    pre-annotations for tasks without them. Every request but /health needs the secret; task images
    are read only from ROOT (local-files URLs) or from the Label Studio server that called /setup.
    Connect it with `ovrsis audit push --backend URL --backend-secret SECRET` (or OVRSIS_BACKEND_SECRET)."""
    import secrets

    from audit.backend import MIB, BackendConfig, ReviewBackend, check_secret, serve
    from audit.interactive import interactive_segmenter

    records = records or root
    try:
        generated = secret is None
        secret = check_secret(secrets.token_urlsafe(24) if generated else secret)
        taxonomy = _taxonomy(records) if (records_file(records)).is_file() else _default_taxonomy()
        config = BackendConfig(
            root=root, records=records, models=models, piseg=piseg, warm=warm, max_image_bytes=max_image_mib * MIB
        )
        interactive_segmenter(models)
        review = ReviewBackend(config, taxonomy)
    except (AuditError, OSError, ValueError) as error:
        fail(error)
    if warm:
        review.warm_in_background()
    console.print(
        f"ML backend on http://{host}:{port} (SAM from models {models!r}; "
        f"embeddings in {records / 'audit' / 'embeddings'})"
    )
    if generated:  # never listen without a lock: the one who started it gets the key
        console.print(
            f"secret (generated, no --secret or {BACKEND_SECRET_ENV}): {secret}\nconnect it with "
            f"{BACKEND_SECRET_ENV} set to it: `ovrsis audit push ... --backend http://{host}:{port}`",
            markup=False,
            highlight=False,
        )
    serve(review, secret, host=host, port=port)


@app.command()
def push(
    records: Path = RECORDS,
    sample: int = typer.Option(
        100, min=0, help="Tiles in the random review queue, drawn from the tiles with a proposal (0: none)."
    ),
    seed: int = typer.Option(0, help="Sampling seed (the same seed gives the same sample)."),
    strata: str = typer.Option("domain", help="Stratify the sample by: domain | none."),
    uncertain: int = typer.Option(0, min=0, help="Also queue this many least-certain tiles in TITLE (uncertain)."),
    stale: bool = typer.Option(
        False, "--stale", help="Also re-queue the tiles whose review is stale in TITLE (stale)."
    ),
    unlabelled: int = typer.Option(
        0,
        min=0,
        help="Also queue this many tiles nothing was proposed for in TITLE (unlabelled): what a reviewer "
        "paints there brings the tile into the dataset at the next build.",
    ),
    project: str | None = typer.Option(None, help="Project title [ovrsis audit: <records folder name>]."),
    root: Path | None = typer.Option(None, help="The server's served root [the records folder]."),
    url: str | None = typer.Option(None, help="Label Studio URL [LABEL_STUDIO_URL or http://127.0.0.1:8089]."),
    backend: str | None = typer.Option(
        None, "--backend", help="ML backend URL (`ovrsis audit backend`) to connect to every pushed queue."
    ),
    backend_secret: str | None = typer.Option(
        None,
        "--backend-secret",
        envvar=BACKEND_SECRET_ENV,
        show_default=False,
        help="With --backend: the backend's secret, which Label Studio then sends it (HTTP Basic auth).",
    ),
) -> None:
    """Push a domain-stratified, seeded sample of tiles (and the uncertain / stale / unlabelled queues) for review.
    Every check runs before anything is created; pushing again creates no duplicates."""
    from audit.client import AuditClient
    from audit.queue import connect_backend
    from audit.session import QueuePlan, default_title, push_queues
    from audit.settings import server_settings

    try:
        if backend and not backend_secret:
            raise AuditError(f"--backend needs the backend's secret: set {BACKEND_SECRET_ENV} (or --backend-secret)")
        client = AuditClient(server_settings(url))
        client.check()
        plan = QueuePlan(
            sample=sample, seed=seed, strata=strata, uncertain=uncertain, stale=stale, unlabelled=unlabelled
        )
        taxonomy = _taxonomy(records)
        pushed = push_queues(client, records, taxonomy, project or default_title(records), root or records, plan)
        for title, summary in pushed:
            _say(
                f"{title!r} (project {summary.project_id}): {summary.created} task(s) created, "
                f"{summary.already_there} already there"
            )
            if backend:
                ml_id = connect_backend(client, summary.project_id, backend, taxonomy, backend_secret)
                _say(f"  ML backend {backend} connected (id {ml_id}, interactive)")
        if not pushed:
            console.print("nothing to queue")
    except AuditError as error:
        fail(error)


@app.command()
def pull(
    records: Path = RECORDS,
    project: str | None = typer.Option(None, help="Project title [ovrsis audit: <records folder name>]."),
    url: str | None = typer.Option(None, help="Label Studio URL."),
) -> None:
    """Append every queue's completed reviews to the ledger (OUT/audit/ledger.jsonl), then apply the
    ledger to the records and masks. Every later `ovrsis build` applies the ledger too, server or not.
    A task or project whose data cannot be a review is left out, with its reason (exit 1)."""
    from audit.client import AuditClient
    from audit.ledger import PULLS
    from audit.session import apply_ledger, default_title, pull_queues
    from audit.settings import server_settings

    try:
        client = AuditClient(server_settings(url))
        client.check()
        summaries = pull_queues(client, records, project or default_title(records))
        for summary in summaries:
            _say_pulled(summary)
        applied = apply_ledger(records, _taxonomy(records))
    except AuditError as error:
        fail(error)
    if applied is None:
        _say(f"{records} is being rebuilt: the reviews are in the ledger, and the running build applies them")
    else:
        _say(f"applied: {applied.reviewed} reviewed tile(s) ({applied.stale} stale), {applied.pending} pending")
        for problem in applied.problems:
            _warn(problem)
    tasks, projects = sum(len(s.set_aside) for s in summaries), sum(s.refused is not None for s in summaries)
    if tasks or projects:
        set_aside(f"{tasks} task(s) and {projects} project(s) left out of the pull", records / PULLS)


SHOWN_REASONS = 20  # a pull names this many set-aside tasks per project; audit/pulls.jsonl holds them all


def _say_pulled(summary: PullSummary) -> None:
    """One pull's summary line and its warnings (Label Studio's text, printed as text, never as markup)."""
    if summary.refused is not None:
        _warn(f"{summary.project!r} (project {summary.project_id}) not pulled: {summary.refused}")
        return
    _say(
        f"{summary.project!r}: {summary.reviewed} of {summary.tasks} tasks reviewed; "
        f"{summary.new_reviews} new review(s) in the ledger"
    )
    if summary.unknown_keys:
        _warn(f"{len(summary.unknown_keys)} task(s) name tiles not in the records")
    for reason in summary.set_aside[:SHOWN_REASONS]:
        _warn(f"{summary.project!r}: {reason} (set aside)")
    if len(summary.set_aside) > SHOWN_REASONS:
        _warn(f"{summary.project!r}: {len(summary.set_aside) - SHOWN_REASONS} more task(s) set aside")


def _say(text: str) -> None:
    """A line whose text may come from data (titles, keys, paths): shown as it is, never read as markup."""
    console.print(Text(text), highlight=False)


def _warn(text: str) -> None:
    console.print(Text.assemble(("warning:", "yellow"), " ", text), highlight=False)


@app.command()
def status(records: Path = RECORDS) -> None:
    """Per queue: tasks, reviewed, pending, stale, reviewers, last pull (local files only, no server).
    A table where it fits the terminal, else a block per queue: names and times are never cut."""
    from audit.status import audit_status, status_view

    try:
        statuses = audit_status(records)
    except AuditError as error:
        fail(error)
    out = Console(soft_wrap=True)
    out.print(status_view(statuses, f"audit of {records}", out))


@app.command()
def stats(records: Path = RECORDS, report: Path = typer.Option(..., help="Folder for the report.")) -> None:
    """Table II per queue (and per category, per domain, IoU, whole-dataset estimate) as Markdown, JSON and PNG."""
    from audit.stats import SAMPLE_QUEUE, write_report

    try:
        payload = write_report(records, report, _taxonomy(records))
    except AuditError as error:
        fail(error)
    sample = payload["queues"].get(SAMPLE_QUEUE)
    if sample:
        table = sample["table"]
        console.print(
            f"{table['audited images']} audited images in the random sample; category accepted "
            f"{table['category accepted']['rate']}, discarded {table['category discarded']['rate']}"
        )
    _say(f"report in {report / 'audit_stats.md'}")


def _taxonomy(records: Path):
    """The taxonomy the build used (named in its records)."""
    from audit.queue import load_live_records
    from taxonomy.loader import load_taxonomy

    live = load_live_records(records)
    if not live:
        raise AuditError(f"{records}: no annotated tile in records.jsonl")
    return load_taxonomy(live[0].provenance.get("taxonomy", {}).get("name", "ovrsis95k"))


def _default_taxonomy():
    from taxonomy.loader import load_taxonomy

    return load_taxonomy("ovrsis95k")


if __name__ == "__main__":  # `python -m audit.cli backend ...`: how `ovrsis audit server --backend` starts it
    app()
