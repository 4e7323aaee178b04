"""memosctl's job commands, under two names: job (beside kv build) and jobs (beside distill)."""

from __future__ import annotations

import sys

from memos_client.cli._terminal import ProgressLine, Table, bar, emit, when
from memos_client.cli.common import EXIT_ERROR, action
from memos_client.client import MemosClient
from memos_client.kv_models import Job, JobState


def add_commands(command, command_name: str, text: str, show_text: str) -> None:
    """Register `command_name` (ls, show, watch, cancel) with cli.app.build_parser's `command(name, run, help)`."""
    p = command(command_name, None, text)
    sub = p.add_subparsers(dest=f"{command_name}_command", required=True, metavar="ACTION")
    a = action(sub, "ls", "your jobs (all jobs, for the admin), newest first")
    a.add_argument("--all", action="store_true", help="include jobs that have ended")
    a.set_defaults(run=job_ls)
    for name, run, text in (("show", job_show, show_text),
                            ("watch", job_watch, "follow a job with a progress bar until it ends"),
                            ("cancel", job_cancel, "ask a job to stop")):
        a = action(sub, name, text)
        a.add_argument("id")
        if name == "watch":
            a.add_argument("--progress", action="store_true",
                           help="show the progress bar even when stderr is not a terminal")
        a.set_defaults(run=run)


def job_ls(client: MemosClient, args) -> int:
    table = Table(("ID", "KIND", "OWNER", "STATE", "PROGRESS", "CREATED", "MESSAGE"),
                  sizes=((26, 26), (8, 10), (5, 12), (9, 9), (8, 16), (16, 16)))
    jobs = client.list_jobs(include_finished=args.all)
    for job in jobs:
        if args.json:
            emit(job.to_json())
        else:
            table.row((job.id, job.kind, job.owner, job.state.name.lower(), _fraction(job), when(job.created_at),
                       job.error or job.message))
    table.flush()
    if not jobs and not args.json:
        print("no jobs" if args.all else "no jobs running or queued (--all adds those that ended)", file=sys.stderr)
    return 0


def job_show(client: MemosClient, args) -> int:
    job = client.get_job(args.id)
    if args.json:
        emit(job.to_json())
        return 0
    for key, value in (("id", job.id), ("kind", job.kind), ("owner", job.owner), ("state", job.state.name.lower()),
                       ("progress", _fraction(job)), ("message", job.message or "-"),
                       ("results", ", ".join(job.result_ids) or "-"),
                       ("metrics", ", ".join(f"{k} {v:.4g}" for k, v in sorted(job.metrics.items())) or "-"),
                       ("error", f"{job.error_code}: {job.error}" if job.error else "-"),
                       ("created", when(job.created_at)), ("started", when(job.started_at)),
                       ("finished", when(job.finished_at))):
        print(f"{key:<10} {value}")
    return 0


def job_watch(client: MemosClient, args) -> int:
    return follow(client, args.id, args)


def job_cancel(client: MemosClient, args) -> int:
    job = client.cancel_job(args.id)
    if args.json:
        emit(job.to_json())
    else:
        print(f"cancelling {job.id}" if not job.finished else f"{job.id} has already ended ({job.state.name.lower()})")
    return 0


def follow(client: MemosClient, job_id: str, args) -> int:
    """Watch a job to its end with a progress bar; print what it made (or why it failed)."""
    bar = JobProgress(sys.stderr, args.progress or sys.stderr.isatty())
    job: Job | None = None
    try:
        for job in client.watch_job(job_id):
            bar.update(job)
    except KeyboardInterrupt:
        bar.finish()
        print(f"memosctl: stopped watching; the job goes on (memosctl job cancel {job_id} stops it)", file=sys.stderr)
        raise
    bar.finish()
    if job is None:
        return EXIT_ERROR
    if args.json:
        emit(job.to_json())
    elif job.state is JobState.SUCCEEDED:
        for cube_id in job.result_ids:
            print(cube_id)
    if job.state is JobState.SUCCEEDED:
        return 0
    reason = f"{job.error_code}: {job.error}" if job.state is JobState.FAILED else "cancelled"
    print(f"memosctl: job {job.id} {job.state.name.lower()}: {reason}", file=sys.stderr)
    return EXIT_ERROR


def _fraction(job: Job) -> str:
    if not job.total:
        return "-"
    return f"{job.done}/{job.total} ({job.done / job.total:.0%})"


class JobProgress(ProgressLine):
    """A job's progress: done/total and its latest message."""

    def update(self, job: Job) -> None:
        share = job.done / job.total if job.total else 0.0
        self.draw(f"{job.kind}  {bar(share)}  {job.done:,}/{job.total:,}  {job.message}", force=job.finished)
