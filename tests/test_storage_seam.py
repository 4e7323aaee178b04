"""The storage seam holds: SQL lives only in the engine packages under memosd/storage/; servicers do not even reach
the database handle."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Statements as SQL writes them (upper-case keywords with their clause), not English words in messages.
SQL = re.compile(r"\b(SELECT\b[\s\S]+\bFROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|"
                 r"CREATE\s+(TABLE|INDEX|VIEW|TRIGGER)|DROP\s+(TABLE|INDEX)|PRAGMA\s+\w+|BEGIN\s+IMMEDIATE)\b")
DB_METHODS = {"read", "write", "execute", "executemany", "executescript", "cursor", "commit"}
DB_MODULES = ("sqlite3", "memosd.storage.sqlite")


def _name(node: ast.AST) -> str:
    return node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""


def storage_access(source: str, filename: str = "<source>") -> list[str]:
    """Each place in the source that holds SQL or talks to the database directly, as 'file:line what'."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        what = None
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
            what = f"SQL {node.value.strip()[:40]!r}"
        elif isinstance(node, ast.Attribute) and node.attr == "db":
            what = "the database handle (.db)"
        elif (isinstance(node, ast.Attribute) and node.attr in DB_METHODS
              and _name(node.value) in {"db", "conn", "connection", "cursor"}):
            what = f"{_name(node.value)}.{node.attr}"
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(n == m or n.startswith(m + ".") for n in names for m in DB_MODULES):
                what = f"import of {', '.join(names)}"
        if what:
            found.append(f"{filename}:{node.lineno} {what}")
    return found


def test_the_check_finds_sql_and_database_access():
    # The check itself can fail: each of these is storage work a servicer must hand to a storage module.
    assert storage_access('q = "SELECT id FROM cubes WHERE ns = ?"')
    assert storage_access('conn.execute("x")')
    assert storage_access("await self.vault.db.write(job)")
    assert storage_access("import sqlite3")
    assert storage_access("from memosd.storage.sqlite.db import Database")
    assert not storage_access('raise InvalidArgument("select a cube to delete, then update it")')


def test_no_servicer_holds_sql_or_reaches_the_database():
    found = []
    for path in sorted((ROOT / "memosd" / "server").rglob("*.py")):
        found += storage_access(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, "storage work belongs in the core's named methods, its SQL in memosd/storage/:\n" + "\n".join(found)


def _sql_and_statements(source: str, filename: str = "<source>") -> list[str]:
    # SQL (an f-string's literal parts read together, as it runs) and statements run on a connection directly.
    found = [f for f in storage_access(source, filename) if " SQL " in f or " conn." in f]
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.JoinedStr):
            text = "{}".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
            if SQL.search(text):
                found.append(f"{filename}:{node.lineno} SQL {text.strip()[:40]!r}")
    return found


def test_the_jobs_and_bundles_check_finds_sql_in_an_f_string():
    assert _sql_and_statements('q = f"SELECT {cols} FROM cubes c WHERE {where}"')
    assert _sql_and_statements('conn.execute("BEGIN")')
    assert not _sql_and_statements('msg = f"select {n} cubes from the list"')


def test_no_sql_outside_the_storage_engines():
    # The seam: every statement is a named function of an engine package under memosd/storage/; the core
    # (vault, governance, store, scheduler, bundles, lifecycle, runtime) and the servicers hold none, and none
    # of them runs a statement on a connection itself.
    found = []
    for path in sorted((ROOT / "memosd").rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[1] == "storage":
            continue
        found += [f for f in _sql_and_statements(path.read_text(), str(rel))]
    assert not found, "SQL belongs in memosd/storage/<engine>/ as named functions:\n" + "\n".join(found)


# Engine-specific on purpose: the embedded engine's online backup and restore, and the export's index of
# blob files (the file blob store, as backups read it).
ENGINE_IMPORTS_ALLOWED = {"memosd/cli.py", "memosd/daemon.py", "memosd/bundle/dumper.py"}


def test_the_core_imports_no_engine():
    found = []
    for path in sorted((ROOT / "memosd").rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[1] == "storage" or str(rel) in ENGINE_IMPORTS_ALLOWED:
            continue
        found += [f for f in storage_access(path.read_text(), str(rel)) if " import of " in f]
    assert not found, "the core reaches an engine only through db (memosd.storage.open_database):\n" + "\n".join(found)
