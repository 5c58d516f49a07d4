"""`batch-pipeline`: serve the local Batch API, run a pipeline, show status, cancel,
remove the intermediates of collected days (gc), and report what the batches cost."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # annotations only: the commands import the core lazily, when they run
    from batch_pipeline.core.partition import Partition
    from batch_pipeline.core.pipeline import PartitionStatus, Pipeline, ResultsSummary
    from batch_pipeline.core.spec import PipelineSpec

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    # The settings module only: the flags are defined without loading the service.
    from batch_pipeline.local_api.settings import add_serve_arguments
    from batch_pipeline.spend_report import add_report_arguments

    parser = argparse.ArgumentParser(
        prog="batch-pipeline",
        description="Run background LLM work through a provider's Batch API.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Log every step.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="Run the local OpenAI-compatible Files + Batches API service."
    )
    add_serve_arguments(serve)

    run = commands.add_parser("run", help="Run one partition end to end.")
    run.add_argument("spec", help="Path of the pipeline's YAML spec.")
    run.add_argument(
        "--partition",
        help="The partition to run, by its key (YYYY-MM-DD: the day, or the first day of the "
        "week or month), or a range FIRST..LAST of them: all are submitted, then waited for. "
        "Left out for a pipeline with `partitions: none`.",
    )
    run.add_argument(
        "--no-wait", action="store_true", help="Submit and return; collect with a later run."
    )
    run.add_argument(
        "--poll-interval", type=float, default=10.0, help="Seconds between polls (default 10)."
    )
    run.add_argument(
        "--rebuild", action="store_true", help="Start the partition afresh as a new generation."
    )
    run.add_argument(
        "--timeout", type=float, default=None, help="Give up waiting after this many seconds."
    )
    run.add_argument(
        "--unreachable-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="Stop with an error once the Batch API has not answered for this long (default: "
        "the spec's backend.unreachable_after_seconds, 600); a first call that cannot connect "
        "stops at once.",
    )

    status = commands.add_parser("status", help="Show partitions, shards and batches.")
    status.add_argument("spec", help="Path of the pipeline's YAML spec.")
    status.add_argument("--partition", help="Only this partition, by its key.")

    cancel = commands.add_parser("cancel", help="Cancel a partition's batches.")
    cancel.add_argument("spec", help="Path of the pipeline's YAML spec.")
    cancel.add_argument(
        "--partition", help="The partition to cancel, by its key (none if unpartitioned)."
    )

    gc = commands.add_parser(
        "gc",
        help="Remove the intermediates of partitions collected long enough ago.",
        description="Remove the request shards and batch files of partitions whose results "
        "were written more than output.keep_intermediates_days ago; results, manifests, "
        "rejected rows and the ledger stay.",
    )
    gc.add_argument("spec", help="Path of the pipeline's YAML spec.")
    gc.add_argument("--dry-run", action="store_true", help="List what would go; remove nothing.")

    report = commands.add_parser(
        "report",
        help="Show what the batches cost and saved, per partition and in total.",
        description="Rows per status, tokens, the cost at batch price, at live price and the "
        "saving of every partition whose results are written, and their total, from the ledger.",
    )
    add_report_arguments(report)

    demo = commands.add_parser(
        "demo",
        help="Run the demo pipeline end to end with Dagster, offline.",
        description="Run the demo pipeline end to end, offline, with Dagster in the loop.",
    )
    # Defined here, not in the demo module, so that parsing them loads none of its libraries.
    demo.add_argument(
        "--dir",
        type=Path,
        default=Path("demo_output") / "cli",
        help="Folder for the sample table, the spec and the results (default demo_output/cli).",
    )
    demo.add_argument(
        "--completion-window-seconds",
        type=float,
        default=None,
        help="The local Batch API's '24h' window, shortened so the unanswered row expires "
        "(default: a few seconds).",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "serve":
        from batch_pipeline.local_api.server import serve_from_args

        return serve_from_args(args)
    if args.command == "demo":
        from batch_pipeline.demo import run_from_args

        return run_from_args(args)
    return _pipeline_command(args, sys.stdout)


def _pipeline_command(args: argparse.Namespace, out: TextIO) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from batch_pipeline.core.backends.base import BackendError
    from batch_pipeline.core.pipeline import PipelineError, load_pipeline
    from batch_pipeline.core.reconnect import LedgerUnavailableError
    from batch_pipeline.core.spec import PipelineSpec, SpecError

    try:
        spec = PipelineSpec.from_yaml(args.spec)
        if args.command == "run" and args.unreachable_after is not None:
            spec = _with_unreachable_after(spec, args.unreachable_after)
        if args.command == "report":  # reads the ledger only: no source, no provider
            from batch_pipeline.spend_report import report_command

            return report_command(spec, args, out)
        # Read before the ledger is opened: a partition that cannot run leaves nothing behind.
        partitions = None if args.command == "gc" else _partitions_of(spec, args)
        with load_pipeline(spec) as pipeline:
            if args.command == "gc":
                return _gc(pipeline, args.dry_run, out)
            if args.command == "run":
                assert partitions is not None
                return _run(pipeline, partitions, args, out)
            if args.command == "status":
                return _status(pipeline, partitions and partitions[0], out)
            if args.command == "cancel":
                assert partitions is not None
                cancelled = pipeline.cancel(partitions[0])
                print(
                    f"cancel requested for {len(cancelled)} batch(es) of {partitions[0]}; "
                    "queued shards will not be submitted",
                    file=out,
                )
                return EXIT_OK
    except (
        SpecError,
        PipelineError,
        BackendError,
        LedgerUnavailableError,
        ValueError,
        OSError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except SQLAlchemyError as exc:  # the ledger's or a SQL source's database
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        print(f"error: database: {reason}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_USAGE


def _partitions_of(spec: PipelineSpec, args: argparse.Namespace) -> list[Partition] | None:
    """The partitions `--partition` names, parsed once (every step takes the parsed values):
    a range for `run`, one otherwise; None for every partition (`status` without it). The
    one partition of an unpartitioned pipeline is implied, and naming one is a ValueError."""
    from batch_pipeline.core.partition import WHOLE_KEY, PartitionKind

    given, command = args.partition, args.command
    partitioning = spec.partitioning
    if partitioning.kind is PartitionKind.NONE:
        if given is not None:
            raise ValueError(
                f"pipeline {spec.name} is not partitioned (partitions: none): leave out --partition"
            )
        return None if command == "status" else [partitioning.parse(WHOLE_KEY)]
    if given is None:
        if command == "status":
            return None
        raise ValueError(
            f"pipeline {spec.name} has {partitioning.kind} partitions: give --partition "
            "YYYY-MM-DD" + (" (or a range FIRST..LAST)" if command == "run" else "")
        )
    return partitioning.parse_range(given) if command == "run" else [partitioning.parse(given)]


def _with_unreachable_after(spec: PipelineSpec, seconds: float) -> PipelineSpec:
    """The spec with `--unreachable-after` in place of its backend's own bound."""
    backend = spec.backend.model_copy(update={"unreachable_after_seconds": seconds})
    return spec.model_copy(update={"backend": backend})


def _run(
    pipeline: Pipeline, partitions: list[Partition], args: argparse.Namespace, out: TextIO
) -> int:
    from batch_pipeline.core.pipeline import PartitionStatus, ResultsSummary

    progress = _ProgressLines(sys.stderr)
    outcomes = pipeline.run_all(
        partitions,
        wait=not args.no_wait,
        poll_interval=args.poll_interval,
        rebuild=args.rebuild,
        timeout=args.timeout,
        on_progress=lambda status, _report: progress.show(status),
    )
    for outcome in outcomes:
        if isinstance(outcome, PartitionStatus):
            print(_submitted_line(pipeline, outcome), file=out)
            continue
        assert isinstance(outcome, ResultsSummary)
        if outcome.already_collected:
            print(
                f"{outcome.partition} is already settled and collected; nothing to do "
                "(use --rebuild to run it afresh)",
                file=out,
            )
        if outcome.spec_changed:
            print(f"note: {outcome.spec_changed}", file=out)
        print(format_results_summary(outcome), file=out)
    return EXIT_OK


def _submitted_line(pipeline: Pipeline, status: PartitionStatus) -> str:
    """What `run --no-wait` did: the requests actually in batches, and those still waiting."""
    from batch_pipeline.core.types import OPEN_STATES

    waiting = [
        shard
        for shard in pipeline.ledger.shards(
            pipeline.spec.name, partition=status.partition, generation=status.generation
        )
        if shard.batch_id is None and shard.state in OPEN_STATES
    ]
    unsent = sum(shard.rows for shard in waiting)
    line = (
        f"{status.partition}: {status.requests - unsent:,} of {status.requests:,} requests "
        f"submitted in {len(status.batches)} batch(es), {status.rejected:,} rejected"
    )
    if waiting:
        reason = next((s.last_error for s in waiting if s.last_error), "queued")
        line += (
            f"; {unsent:,} requests in {len(waiting)} shard(s) not submitted yet ({reason}): "
            "a later run or poll submits them"
        )
    return line + "; run again to collect the results"


def format_results_summary(summary: ResultsSummary) -> str:
    """A readable block: rows per status, tokens, cost at batch price and the saving."""
    lines = [f"results: {summary.path}", f"rows:    {summary.rows:,}"]
    for status, count in summary.counts.items():
        if count:
            lines.append(f"  {status:<10} {count:>10,}")
    lines.append(f"tokens:  {summary.input_tokens:,} in, {summary.output_tokens:,} out")
    if summary.cost_batch_usd is not None:
        lines.append(
            f"cost:    ${summary.cost_batch_usd:.4f} at batch price "
            f"(live: ${summary.cost_live_usd:.4f}, saved ${summary.saved_usd:.4f})"
        )
    else:
        lines.append("cost:    unknown (no price for this model; add one under `prices:`)")
    return "\n".join(lines)


def _status(pipeline: Pipeline, partition: Partition | None, out: TextIO) -> int:
    statuses = pipeline.status(partition)
    if not statuses:
        print(f"{pipeline.spec.name}: no partition built yet", file=out)
    for status in statuses:
        shards = ", ".join(f"{n} {state}" for state, n in sorted(status.shards.items())) or "none"
        print(
            f"{status.partition}  gen {status.generation}  {status.state:<9}  "
            f"{status.requests:,} requests, {status.rejected:,} rejected; shards: {shards}",
            file=out,
        )
        for batch in status.batches:
            print(
                f"    {batch['batch_id']}  {batch['status']:<11} "
                f"{batch['completed']:,}/{batch['total']:,} done, {batch['failed']:,} failed",
                file=out,
            )
        for reason in status.waiting:
            print(f"    waiting: {reason}", file=out)
        if status.results_path:
            print(f"    results: {status.results_path}", file=out)
    return EXIT_OK


def _gc(pipeline: Pipeline, dry_run: bool, out: TextIO) -> int:
    report = pipeline.gc(dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for cleaned in report.partitions:
        for key in cleaned.files:
            print(f"{verb} {pipeline.storage.uri(key)}", file=out)
        print(
            f"{cleaned.partition}: {verb} {len(cleaned.files):,} files, "
            f"{_megabytes(cleaned.bytes)} (generation {cleaned.generation})",
            file=out,
        )
    print(
        f"{pipeline.spec.name}: {verb} {report.files:,} intermediate files of "
        f"{len(report.partitions)} partition(s), {_megabytes(report.bytes)} "
        f"{'to free' if dry_run else 'freed'} (keep_intermediates_days: "
        f"{pipeline.spec.output.keep_intermediates_days:g})",
        file=out,
    )
    return EXIT_OK


def _megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


class _ProgressLines:
    """One progress bar per partition: redrawn in place on a terminal; elsewhere a plain line
    each time a partition's progress changes."""

    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._lines: dict[str, str] = {}  # the last line of each partition, in order seen

    def show(self, status: PartitionStatus) -> None:
        total = sum(b["total"] for b in status.batches) or status.requests or 1
        done = sum(b["completed"] + b["failed"] for b in status.batches)
        if status.state.is_settled:
            done = total
        filled = int(self.WIDTH * min(done / total, 1.0))
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        line = (
            f"{status.partition} [{bar}] {done:,}/{total:,} requests, "
            f"{len(status.batches)} batch(es), {status.state}"
        )
        if self._lines.get(status.partition) == line:
            return
        drawn = len(self._lines)
        self._lines[status.partition] = line
        if self.tty:  # back to the first bar, and every bar again
            up = f"\x1b[{drawn}F" if drawn else ""
            self.stream.write(up + "".join(f"{bar}\x1b[K\n" for bar in self._lines.values()))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


if __name__ == "__main__":
    sys.exit(main())
