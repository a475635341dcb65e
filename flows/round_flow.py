"""The Prefect flow `audit-round`: one audit round (flows/rounds.py) as a flow run, served beside the
build (`ovrsis serve`; `prefect deployment run audit-round/local --param records=OUT`), with the round's
queue as a table artifact and the distribution of its signal's scores, with the queue's cut-off, as a
chart in a markdown artifact (also written to OUT/audit/rounds/NNN/round.md)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.rounds import RoundResult, run_round
from pipeline.dataset.markdown import embedded_images


def _run(records: str, signal: str, count: int, iters: int, backbone: str, seed: int) -> RoundResult:
    from pipeline.files.atomic import output_lock

    logger = get_run_logger()
    with output_lock(Path(records), wait=False):  # no build rewrites masks and records under the round
        return run_round(Path(records), signal, count, iters, backbone, seed, notice=logger.info)


round_task = task(_run, name="round", persist_result=False, cache_policy=NO_CACHE)


@flow(name="audit-round")
def audit_round(
    records: str, signal: str = "combined", count: int = 50, iters: int = 2000, backbone: str = "vit-b", seed: int = 0
) -> dict:
    """Train Pi-Seg on the reviewed tiles of the build output folder `records`, rank the unreviewed tiles
    by `signal` and write the next queue (`ovrsis audit round` without --push)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    result = round_task(records, signal, count, iters, backbone, seed)
    report = write_round_report(result, signal)
    rows = [{"rank": rank, "key": key, **result.scores[key]} for rank, key in enumerate(result.queue, 1)]
    try:
        create_table_artifact(rows, key="round-queue", description=f"Round {result.number}: the queue by {signal}")
        create_markdown_artifact(embedded_images(report), key="round", description=f"Round {result.number}")
    except Exception as error:  # noqa: BLE001 (the round is written: an unreachable API must not undo that)
        get_run_logger().warning("artifacts not published (the files in %s are): %s", result.folder, error)
    return {"number": result.number, "checkpoint": str(result.checkpoint), "queue": result.queue}


def write_round_report(result: RoundResult, signal: str) -> Path:
    """OUT/audit/rounds/NNN/round.md and scores.png: the queue and the score distribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = sorted((scores[signal] for scores in result.scores.values()), reverse=True)
    figure, axes = plt.subplots(figsize=(6.0, 3.2), dpi=110)
    axes.hist(values, bins=min(30, max(5, len(values) // 3)), color="#5470c6")
    if result.queue:
        cut = result.scores[result.queue[-1]][signal]
        axes.axvline(cut, color="#d62728", linestyle="--", label=f"queue cut-off ({len(result.queue)} tiles)")
        axes.legend()
    axes.set_xlabel(f"{signal} score (higher: reviewed sooner)")
    axes.set_ylabel("unreviewed tiles")
    axes.set_title(f"Round {result.number}: {len(values)} tiles scored")
    figure.tight_layout()
    figure.savefig(result.folder / "scores.png")
    plt.close(figure)
    lines = [
        f"# Audit round {result.number}",
        "",
        f"Pi-Seg trained on {result.trained_on} reviewed tile(s): `{result.checkpoint}`. Queue by `{signal}`:",
        "",
        "![score distribution](scores.png)",
        "",
        "| rank | tile | " + " | ".join(next(iter(result.scores.values()))) + " |",
        "|---:|---|" + "---:|" * len(next(iter(result.scores.values()))),
        *(
            f"| {rank} | {key} | " + " | ".join(f"{v:.3f}" for v in result.scores[key].values()) + " |"
            for rank, key in enumerate(result.queue, 1)
        ),
        "",
    ]
    report = result.folder / "round.md"
    report.write_text("\n".join(lines))
    return report
