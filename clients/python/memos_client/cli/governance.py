"""memosctl's governance commands: agents, grants, policies, the audit log."""

from __future__ import annotations

import json
import time

from memos_client.cli._terminal import Table, emit, when
from memos_client.cli.common import action
from memos_client.auth import fingerprint, verify_signature
from memos_client.client import MemosClient
from memos_client.errors import InvalidArgument

ACTIONS = ("read", "write", "delete", "share", "publish", "subscribe", "admin")
KINDS = ("plaintext", "activation", "parametric")


def add_commands(command) -> None:
    """Register the commands with cli.app.build_parser's `command(name, run, help)`."""
    p = command("whoami", _whoami, "show which agent this key is and the daemon it is for")

    p = command("agent", None, "manage agent identities (admin)")
    sub = p.add_subparsers(dest="agent_command", required=True, metavar="ACTION")
    a = action(sub, "add", "create an agent's key file and register its public key")
    a.add_argument("name")
    a.add_argument("--out", metavar="FILE", help="where to write the key file (default ./NAME.key, mode 0600)")
    a.add_argument("-g", "--group", dest="groups", action="append", default=[], help="a group to join (repeat)")
    a.set_defaults(run=_agent_add)
    a = action(sub, "ls", "list agents")
    a.add_argument("--all", action="store_true", help="include revoked agents")
    a.set_defaults(run=_agent_ls)
    a = action(sub, "revoke", "revoke an agent: its tokens and open streams stop at once")
    a.add_argument("name")
    a.set_defaults(run=_agent_revoke)

    p = command("grant", _grant, "sign a policy with your key granting actions on namespaces, and store it")
    p.add_argument("subject", help="agent:NAME, group:NAME, or a bare agent NAME")
    p.add_argument("actions", help=f"comma-separated: {','.join(ACTIONS)}")
    p.add_argument("namespaces", nargs="+", metavar="NAMESPACE", help='"ns" for one namespace, "ns/**" for it and all below')
    p.add_argument("--kind", dest="kinds", action="append", choices=KINDS, default=[],
                   help="only cubes of this kind (repeat; default all kinds)")
    p.add_argument("--expires", type=float, metavar="SECONDS", help="the grant lapses after this many seconds")

    p = command("policy", None, "list, show and revoke signed policies")
    sub = p.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    a = action(sub, "ls", "policies you issued or that name you (all, for the admin)")
    a.add_argument("--subject", default="", help="only policies for this subject")
    a.add_argument("--all", action="store_true", help="include revoked and expired policies")
    a.set_defaults(run=_policy_ls)
    a = action(sub, "show", "one policy: its document, signature, and whether the signature verifies")
    a.add_argument("id")
    a.set_defaults(run=_policy_show)
    a = action(sub, "revoke", "revoke a policy you issued (or any, as admin)")
    a.add_argument("id")
    a.set_defaults(run=_policy_revoke)

    p = command("audit", _audit, "show the hash-chained audit log (admin); 'audit verify' checks the chain and its signatures")
    p.add_argument("verify", nargs="?", choices=["verify"], help="check every entry's hash and link")
    p.add_argument("--after", type=int, default=0, metavar="SEQ", help="entries after this sequence number")
    p.add_argument("--limit", type=int, default=0, metavar="N", help="at most N entries")


def _subject(text: str) -> str:
    return text if ":" in text else f"agent:{text}"


def _whoami(client: MemosClient, args) -> int:
    agent, daemon_id, epoch = client.whoami()
    if args.json:
        emit({**agent.to_json(), "daemon_id": daemon_id, "policy_epoch": epoch})
    else:
        print(f"agent      {agent.name}{' (admin)' if agent.admin else ''}")
        print(f"groups     {', '.join(agent.groups) or '-'}")
        print(f"key        {fingerprint(agent.public_key)}")
        print(f"daemon     {daemon_id} (policy epoch {epoch})")
    return 0


def _agent_add(client: MemosClient, args) -> int:
    agent, path = client.add_agent(args.name, groups=args.groups, out=args.out)
    if args.json:
        emit({**agent.to_json(), "key_file": path})
    else:
        print(f"added agent {agent.name}; its key is in {path} (mode 0600)")
        print(f"use it with: memosctl --key {path} ...   or   MEMOS_KEY={path}")
    return 0


def _agent_ls(client: MemosClient, args) -> int:
    table = Table(("NAME", "GROUPS", "KEY", "CREATED", "REVOKED"), sizes=((4, 24), (6, 24), (16, 16), (16, 16)))
    for agent in client.list_agents(include_revoked=args.all):
        if args.json:
            emit(agent.to_json())
        else:
            name = agent.name + (" (admin)" if agent.admin else "")
            table.row((name, ",".join(agent.groups) or "-", fingerprint(agent.public_key), when(agent.created_at),
                       when(agent.revoked_at)))
    table.flush()
    return 0


def _agent_revoke(client: MemosClient, args) -> int:
    agent = client.revoke_agent(args.name)
    if args.json:
        emit(agent.to_json())
    else:
        print(f"revoked agent {agent.name}")
    return 0


def _grant(client: MemosClient, args) -> int:
    actions = [a.strip() for a in args.actions.split(",") if a.strip()]
    unknown = set(actions) - set(ACTIONS)
    if unknown or not actions:
        raise InvalidArgument(f"unknown actions {sorted(unknown)}; choose from {', '.join(ACTIONS)}")
    expires = time.time() + args.expires if args.expires else None
    policy_id = client.grant(_subject(args.subject), actions, args.namespaces, kinds=args.kinds, expires_at=expires)
    if args.json:
        emit({"id": policy_id})
    else:
        print(policy_id)
    return 0


def _policy_ls(client: MemosClient, args) -> int:
    table = Table(("ID", "ISSUER", "SUBJECT", "ACTIONS", "NAMESPACES"), sizes=((20, 20), (5, 16), (7, 24), (7, 30)))
    for policy in client.list_policies(_subject(args.subject) if args.subject else "", include_inactive=args.all):
        d = policy.document
        if args.json:
            emit(policy.to_json())
        else:
            revoked = " (revoked)" if policy.revoked_at else ""
            table.row((d["id"] + revoked, d["issuer"], d["subject"], ",".join(d["actions"]), " ".join(d["namespaces"])))
    table.flush()
    return 0


def _policy_show(client: MemosClient, args) -> int:
    policy = client.get_policy(args.id)
    issuer = next((a for a in client.list_agents(include_revoked=True) if a.name == policy.document["issuer"]), None) \
        if client.whoami()[0].admin else None
    verified = verify_signature(issuer.public_key, policy.signed_bytes, policy.signature) if issuer else None
    if args.json:
        emit({**policy.to_json(), "signature_verified": verified})
        return 0
    print(json.dumps(policy.document, indent=2, ensure_ascii=False))
    print(f"signature  {policy.signature.hex()}")
    print(f"verified   {'yes' if verified else 'no' if verified is False else 'not checked (needs the admin)'}")
    print(f"revoked    {when(policy.revoked_at)}")
    return 0


def _policy_revoke(client: MemosClient, args) -> int:
    epoch = client.revoke_policy(args.id)
    if args.json:
        emit({"id": args.id, "revoked": True, "policy_epoch": epoch})
    else:
        print(f"revoked {args.id}")
    return 0


def _audit(client: MemosClient, args) -> int:
    if args.verify:
        r = client.audit_report()
        if args.json:
            emit(r.to_json())
        elif not r.ok:
            print(f"audit log BROKEN at entry {r.first_bad_seq}: {r.reason}")
        else:
            signed = (f"{r.checkpoints} signed checkpoint{'s' if r.checkpoints > 1 else ''},"
                      f" the last at entry {r.last_checkpoint_seq}"
                      if r.checkpoints else "no signed checkpoint yet")
            print(f"audit log intact: {r.entries} entries, {signed} (audit key {r.audit_key_fingerprint});"
                  f" unsigned tail ({r.unsigned_tail} entries)")
        return 0 if r.ok else 1
    table = Table(("SEQ", "TIME", "AGENT", "ACTION", "DECISION", "TARGET"),
                  sizes=((3, 8), (16, 16), (5, 16), (6, 36), (5, 5)))
    for shown, entry in enumerate(client.audit(args.after), 1):
        if args.json:
            emit(entry.to_json())
        else:
            target = entry.target + (f"  {entry.detail}" if entry.decision == "deny" else "")
            table.row((str(entry.seq), when(entry.time), entry.agent, entry.action, entry.decision, target))
        if shown == args.limit:
            break
    table.flush()
    return 0
