"""memosctl's parametric-memory commands: adapter (ls, show, rm, push, pull), distill and plan."""

from __future__ import annotations

import sys
from pathlib import Path

from memos_client.cli._terminal import Table, emit, size, when
from memos_client.cli.common import UsageError, action, positive, readable, remove_cubes
from memos_client.cli.jobs import follow
from memos_client.client import MemosClient
from memos_client.errors import InvalidArgument, MemosError
from memos_client.models import Cube, Kind


def add_commands(command) -> None:
    """Register the commands with cli.app.build_parser's `command(name, run, help)`."""
    p = command("adapter", None, "parametric memory: LoRA adapters stored as cubes (list, show, remove, push, pull)")
    sub = p.add_subparsers(dest="adapter_command", required=True, metavar="ACTION")
    a = action(sub, "ls", "list adapter cubes, oldest first")
    a.add_argument("-n", "--namespace", metavar="PREFIX", help="only this namespace and those under it")
    a.add_argument("--model", metavar="FINGERPRINT", help="only adapters for this base model (a fingerprint or its start)")
    a.add_argument("--limit", type=positive(int), metavar="N", help="at most N cubes (default all)")
    a.set_defaults(run=_adapter_ls)
    a = action(sub, "show", "one adapter cube: its base model, PEFT settings, size and lineage")
    a.add_argument("id")
    a.set_defaults(run=_adapter_show)
    a = action(sub, "rm", "delete adapter cubes (their blob goes once nothing references it)")
    a.add_argument("ids", nargs="+", metavar="ID")
    a.set_defaults(run=_adapter_rm)
    a = action(sub, "push", "store a PEFT adapter directory as an adapter cube and print its id")
    a.add_argument("directory", help="holds adapter_config.json and adapter_model.safetensors")
    base = a.add_mutually_exclusive_group(required=True)
    base.add_argument("--base-model", metavar="DIR", help="the local base model directory (loaded to fingerprint it"
                      " and check the adapter's modules against it)")
    base.add_argument("--model", metavar="FINGERPRINT", help="the base model's fingerprint, when it is not at hand"
                      " (the adapter is then checked only against itself)")
    a.add_argument("-n", "--namespace", help="where to store it (default agents/AGENT/adapters)")
    a.add_argument("-t", "--tag", dest="tags", action="append", default=[], metavar="TAG", help="a tag (repeat)")
    a.add_argument("--from", dest="derived_from", action="append", default=[], metavar="ID",
                   help="a cube it was trained on, for its lineage (repeat)")
    a.add_argument("--source", default="", help="where the adapter came from")
    a.add_argument("--allow-pickle", action="store_true", help="read adapter_model.bin (a pickle) with torch's"
                   " weights-only unpickler when there is no adapter_model.safetensors")
    a.set_defaults(run=_adapter_push)
    a = action(sub, "pull", "write an adapter cube as a PEFT directory that PeftModel.from_pretrained reads")
    a.add_argument("id")
    a.add_argument("directory", help="a new or empty directory")
    a.set_defaults(run=_adapter_pull)

    p = command("distill", _distill, "have the daemon train a LoRA adapter on plaintext cubes and store it")
    p.add_argument("ids", nargs="*", metavar="ID", help="exactly these plaintext cubes (else select with -n, -t, -q)")
    p.add_argument("-n", "--namespace", metavar="PREFIX", help="train on the plaintext in this namespace and below")
    p.add_argument("-t", "--tag", dest="tags", action="append", default=[], metavar="TAG",
                   help="only plaintext with this tag (repeat: all of them)")
    p.add_argument("-q", "--query", default="", help="only the best matches of this search")
    p.add_argument("--limit", type=positive(int), default=0, metavar="N", help="at most N cubes (default 256)")
    p.add_argument("--into", metavar="NS", help="where to store the adapter (default agents/AGENT/adapters)")
    p.add_argument("--adapter-tag", dest="adapter_tags", action="append", default=[], metavar="TAG",
                   help="a tag of the new adapter (repeat)")
    p.add_argument("--template", default="", help='how each cube becomes a training text: "{text}" (default)'
                   ' and "{id}" are replaced')
    p.add_argument("--rank", type=positive(int), default=0, metavar="R", help="LoRA rank (default 8)")
    p.add_argument("--alpha", type=positive(float), default=0, metavar="A", help="LoRA alpha (default 2 x rank)")
    p.add_argument("--dropout", type=float, default=0.0, metavar="P", help="LoRA dropout (default 0)")
    p.add_argument("--target-module", dest="target_modules", action="append", default=[], metavar="NAME",
                   help="a module to adapt, e.g. q_proj (repeat; default PEFT's choice for the model)")
    p.add_argument("--steps", type=positive(int), default=0, metavar="N", help="training steps (default 100)")
    p.add_argument("--lr", type=positive(float), default=0, metavar="LR", help="learning rate (default 0.001)")
    p.add_argument("--batch-size", type=positive(int), default=0, metavar="N", help="texts per step (default 4)")
    p.add_argument("--max-tokens", type=positive(int), default=0, metavar="N",
                   help="tokens per text, longer ones cut (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the text order (default 0)")
    p.add_argument("--model", metavar="FINGERPRINT", default="",
                   help="fail unless the daemon's base model has this fingerprint")
    p.add_argument("--detach", action="store_true", help="print the job id and return at once")
    p.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")

    p = command("plan", _plan, "which memory to use for a query: plaintext hits, a KV cache, adapters, and why")
    p.add_argument("query")
    p.add_argument("--model", metavar="FINGERPRINT", default="",
                   help="the base model the agent runs (without it, plaintext only)")
    p.add_argument("--tokens", metavar="ID,ID,...", default="",
                   help="the prompt's token ids, to pick the KV cache covering its longest prefix")
    p.add_argument("-n", "--namespace", metavar="PREFIX", help="only memory in this namespace and below")
    p.add_argument("--limit", type=positive(int), default=0, metavar="N", help="plaintext hits (default 5)")
    p.add_argument("--adapters", type=positive(int), default=0, metavar="N", help="adapters (default 3)")
    p.add_argument("--agent", default="", help="plan as this agent sees memory (admin only)")


# ---- adapter ---------------------------------------------------------------------------------------------


def _adapter_json(cube: Cube) -> dict:
    return cube.to_json()


def _adapter_ls(client: MemosClient, args) -> int:
    table = Table(("ID", "NAMESPACE", "MODEL", "RANK", "ALPHA", "TARGETS", "SIZE", "UPDATED"),
                  sizes=((26, 26), (10, 28), (12, 12), (4, 5), (5, 6), (8, 30), (8, 10)))
    shown = 0
    for cube in client.list(args.namespace, kinds=[Kind.PARAMETRIC]):
        a = cube.adapter
        if a is None or (args.model and not a.model_fingerprint.startswith(args.model)):
            continue
        if args.json:
            emit(_adapter_json(cube))
        else:
            table.row((cube.id, cube.namespace, a.model_fingerprint[:12], str(a.rank), f"{a.lora_alpha:g}",
                       ",".join(a.target_modules), size(a.blob.size), when(cube.updated_at)))
        shown += 1
        if shown == args.limit:
            break
    table.flush()
    if not shown and not args.json:
        print("no adapters match", file=sys.stderr)
    return 0


def _adapter_show(client: MemosClient, args) -> int:
    cube = client.get(args.id)
    a = cube.adapter
    if a is None:
        raise MemosError(f"cube {cube.id} is a {cube.kind.name.lower()} cube, not an adapter")
    if args.json:
        emit(_adapter_json(cube))
        return 0
    for key, value in (
        ("id", cube.id), ("namespace", cube.namespace), ("base model", a.model_fingerprint),
        ("base name", a.base_model_name or "-"), ("peft", f"{a.peft_type} {a.task_type}".strip()),
        ("rank", str(a.rank)), ("alpha", f"{a.lora_alpha:g}"), ("targets", ", ".join(a.target_modules)),
        ("modules", str(a.num_modules)), ("parameters", f"{a.num_parameters:,} ({a.dtype})"),
        ("size", f"{size(a.blob.size)} ({a.blob.size} bytes, sha256 {a.blob.sha256})"),
        ("from", ", ".join(cube.derived_from) or "-"), ("source", cube.source or "-"),
        ("tags", ", ".join(cube.tags) or "-"), ("owner", cube.owner), ("created", when(cube.created_at)),
        ("version", str(cube.version)),
    ):
        print(f"{key:<11} {value}")
    return 0


def _adapter_rm(client: MemosClient, args) -> int:
    return remove_cubes(client, args.ids, args.json, Kind.PARAMETRIC, "an adapter")


def _load_base(directory: str):
    if not (readable(directory, "--base-model", directory=True) / "config.json").is_file():
        raise UsageError(f"--base-model {directory} is not a local model directory (no config.json there)")
    try:
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise InvalidArgument("--base-model needs transformers installed; give --model FINGERPRINT instead") from None
    hf_logging.disable_progress_bar()
    try:
        return AutoModelForCausalLM.from_pretrained(Path(directory).expanduser(), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"cannot load the base model at {directory}: {' '.join(str(exc).split())[:300]}") from None


def _adapter_push(client: MemosClient, args) -> int:
    readable(args.directory, "adapter directory", directory=True)
    base = _load_base(args.base_model) if args.base_model else None
    cube_id = client.push_adapter(args.directory, base, namespace=args.namespace, model_fingerprint=args.model or None,
                                  allow_pickle=args.allow_pickle, tags=args.tags, derived_from=args.derived_from,
                                  source=args.source)
    if args.json:
        emit(_adapter_json(client.get(cube_id)))
    else:
        print(cube_id)
    return 0


def _adapter_pull(client: MemosClient, args) -> int:
    path = client.pull_adapter(args.id, args.directory)
    if args.json:
        emit({"id": args.id, "directory": str(path)})
    else:
        print(path)
    return 0


# ---- distill and plan -----------------------------------------------------------------------------------------


def _distill(client: MemosClient, args) -> int:
    job, sources = client.distill(
        args.into, cube_ids=args.ids, namespace_prefix=args.namespace or "", tags=args.tags, query=args.query,
        limit=args.limit, template=args.template, adapter_tags=args.adapter_tags, model_fingerprint=args.model,
        rank=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout, target_modules=args.target_modules,
        steps=args.steps, learning_rate=args.lr, batch_size=args.batch_size, max_tokens=args.max_tokens,
        seed=args.seed)
    if not args.json:
        print(f"training on {len(sources)} plaintext cubes (job {job.id})", file=sys.stderr)
    if args.detach:
        if args.json:
            emit({**job.to_json(), "source_ids": sources})
        else:
            print(job.id)
        return 0
    code = follow(client, job.id, args)
    metrics = client.get_job(job.id).metrics
    if code == 0 and not args.json and "loss_after" in metrics:
        print(f"mean loss on the training texts: {metrics['loss_before']:.4f} without the adapter, "
              f"{metrics['loss_after']:.4f} with it", file=sys.stderr)
    return code


def _plan(client: MemosClient, args) -> int:
    try:
        tokens = [int(t) for t in args.tokens.replace(" ", "").split(",") if t]
    except ValueError:
        raise InvalidArgument(f"--tokens {args.tokens!r}: give token ids separated by commas") from None
    plan = client.plan(args.query, model_fingerprint=args.model, token_ids=tokens, namespace=args.namespace,
                       limit=args.limit, max_adapters=args.adapters, agent=args.agent)
    if args.json:
        emit(plan.to_json())
        return 0
    print("plaintext")
    for c in plan.plaintext:
        print(f"  {c.cube.id}  {c.score:7.3f}  {c.reason}\n      {_snippet(c.cube.text)}")
    if not plan.plaintext:
        print("  (no hits)")
    print("activation")
    if plan.activation is not None:
        c = plan.activation
        print(f"  {c.cube.id}  {c.score:7.3f}  {c.reason}")
    else:
        print("  (none)" if args.model else "  (give --model to plan tensor memory)")
    print("adapters")
    for c in plan.adapters:
        print(f"  {c.cube.id}  {c.score:7.3f}  {c.reason}")
    if not plan.adapters:
        print("  (none)" if args.model else "  (give --model to plan tensor memory)")
    return 0


def _snippet(text: str | None, width: int = 90) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[:width - 1] + "…"
