"""Import of a MemTensor/MemOS MemCube dump directory (what GeneralMemCube.dump and the text memories' dump write).

    config.json                 the cube's config (optional: the tree example ships without one); it names
                                the files below through each memory's memory_filename
    textual_memory.json         textual memories, in the general, naive or tree layout (memos_items.py),
                                decided from the content
    preference memory (.json)   {collection: [vector-db item]}, also decided from the content
    activation_memory.pickle    KV caches, pickled: read only when asked, with the restricted unpickler
    parametric_memory.adapter   a LoRA adapter: not imported (noted)

Any other file (a README) is ignored with a note. Embeddings are dropped: they belong to another
embedder, and memosd embeds the text again when it has one.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from memos_mip.bounds import JSONLimitError, loads, quote
from memos_mip.bundle_format import BundleError, default_memos_namespace
from memos_mip.memos_kv import MemosKV
from memosd.bundle.loader import BATCH, ImportReport
from memosd.bundle.memos_items import Layout, item_links, layout_of, link_cubes, memos_item_cube, stable_id
from memosd.cube import MemCube, MemoryKind
from memosd.limits import Limits, check_namespace
from memosd.vault.imported import agent_id, import_cubes

__all__ = ["CONFIG", "MemosDump", "default_namespace", "load_memos_dump", "memos_item_cube", "read_memos_dump",
           "stable_id"]

CONFIG = "config.json"
MEMORIES = ("text_mem", "act_mem", "para_mem", "pref_mem")
DEFAULT_FILES = {"text_mem": "textual_memory.json", "act_mem": "activation_memory.pickle",
                 "para_mem": "parametric_memory.adapter"}
# A textual memory file holds every memory with its embedding (a few KiB of floats each); parsed whole.
MAX_JSON_BYTES = 1 << 30


@dataclass
class MemosDump:
    cube_id: str
    cubes: list[MemCube]
    kv: list[MemosKV] = field(default_factory=list)
    model: str = ""
    layouts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_config(files: dict[str, Path]) -> dict | None:
    """config.json if the dump has one (checked to be a MemOS MemCube config); None if it has none."""
    if CONFIG not in files:
        return None
    config = _json(files, CONFIG)
    if not isinstance(config, dict) or not (any(k in config for k in MEMORIES)
                                            or "MemCube" in str(config.get("model_schema", ""))):
        raise BundleError("InvalidArgument", "config.json is not a MemOS MemCube config (no text_mem, no MemCube"
                          " model_schema)")
    return config


def read_memos_dump(files: dict[str, Path], namespace: str, limits: Limits, *, allow_pickle: bool,
                    now: float) -> MemosDump:
    """Map a dump's files to cubes under `namespace` (blocking; run it on a thread). Everything is read and
    checked before anything is returned, so a bad file stores nothing."""
    check_namespace(namespace)
    config = read_config(files)
    dump = MemosDump(cube_id=str((config or {}).get("cube_id") or ""), cubes=[], model=_model(config or {}))
    named = _named_files(config)
    texts, pickles, ignored = [], [], []
    for name in sorted(files):
        if name == CONFIG:
            continue
        if name.endswith(".json"):
            texts.append(name)
        elif name.endswith(".pickle"):
            pickles.append(name)
        elif name.endswith(".adapter"):
            dump.notes.append(f"{name} was not imported: MemOS adapters are not supported yet")
        else:
            ignored.append(name)
    by_memos_id: dict[str, MemCube | None] = {}
    edges: list[tuple[str, dict]] = []
    deleted = 0
    for name in texts:
        layout = layout_of(_json(files, name), name)
        if layout is None:
            if name in named:
                raise BundleError("InvalidArgument", f"{name} is not a MemOS textual memory file: neither a list of"
                                  " memories, a tree of nodes nor preference collections")
            ignored.append(name)
            continue
        dump.layouts.append(f"{layout.name} ({name})")
        deleted += _read_layout(layout, name, namespace, limits, now, dump, by_memos_id, edges)
    if not texts and not pickles:
        raise BundleError("InvalidArgument", "the dump holds no MemOS memory files (textual_memory.json,"
                          " activation_memory.pickle): neither a memosd bundle (manifest.json) nor a MemOS dump")
    link_cubes(by_memos_id, edges, limits)
    if deleted:
        dump.notes.append(f"{deleted} textual memories marked deleted in MemOS were not imported")
    if ignored:
        dump.notes.append(f"ignored {', '.join(quote(n) for n in ignored)}: not MemOS memory files")
    for name in pickles:
        if not allow_pickle:
            dump.notes.append(f"{name} was not read: pickles can run code; pass --allow-pickle (and --model DIR to"
                              " bind its caches to a local model) to read it with the restricted unpickler")
            continue
        from memos_mip.memos_kv import read_kv_pickle

        dump.kv.extend(read_kv_pickle(files[name].read_bytes(), name))
    return dump


def _read_layout(layout: Layout, name: str, namespace: str, limits: Limits, now: float, dump: MemosDump,
                 by_memos_id: dict[str, MemCube | None], edges: list[tuple[str, dict]]) -> int:
    """Add a layout's cubes to the dump and collect its edges; returns how many items were deleted ones."""
    deleted = 0
    for number, item in enumerate(layout.items, 1):
        cube = memos_item_cube(item, namespace, limits, now, number, name)
        memos_id = str(item.get("id") or "") if isinstance(item, dict) else ""
        if memos_id in by_memos_id:
            raise BundleError("InvalidArgument", f"{name} item {number}: the id {quote(memos_id)} appears twice")
        if memos_id:
            by_memos_id[memos_id] = cube
        if cube is None:
            deleted += 1
            continue
        dump.cubes.append(cube)
        edges.extend((f"{name} item {number} memos_links", {"source": memos_id, "target": link.get("memos_id"),
                                                             "type": link.get("type")})
                     for link in item_links(item))
    edges.extend((f"{name} edge {number}", edge) for number, edge in enumerate(layout.edges, 1))
    return deleted


def _named_files(config: dict | None) -> set[str]:
    """The memory files the config names (each memory's memory_filename, or MemOS's default)."""
    names = set()
    for memory in MEMORIES:
        section = (config or {}).get(memory)
        if not isinstance(section, dict):
            continue
        inner = section.get("config")
        name = (inner.get("memory_filename") if isinstance(inner, dict) else None) or DEFAULT_FILES.get(memory)
        if isinstance(name, str):
            names.add(name)
    return names or {DEFAULT_FILES["text_mem"]}


def _json(files: dict[str, Path], name: str):
    if files[name].stat().st_size > MAX_JSON_BYTES:
        raise BundleError("InvalidArgument", f"{name} is over its limit of {MAX_JSON_BYTES >> 30} GiB")
    try:
        return loads(files[name].read_bytes(), what=name, max_bytes=MAX_JSON_BYTES)
    except JSONLimitError as exc:
        raise BundleError("InvalidArgument", str(exc)) from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise BundleError("InvalidArgument", f"{name} is not JSON: {exc}") from None


def _model(config: dict) -> str:
    for key in ("act_mem", "text_mem"):
        try:
            return str(config[key]["config"]["extractor_llm"]["config"]["model_name_or_path"])
        except (KeyError, TypeError):
            continue
    return ""


def default_namespace(agent: str, cube_id: str) -> str:
    """agents/AGENT/memos/CUBE (memos_mip.bundle_format.default_memos_namespace, which the client uses too)."""
    return default_memos_namespace(agent, cube_id)


async def load_memos_dump(files: dict[str, Path], *, vault, governance, principal, options) -> ImportReport:
    """Read a MemOS dump and store its textual memories (and report what was left out)."""
    config = await asyncio.to_thread(read_config, files)
    cube_id = str((config or {}).get("cube_id") or "")
    namespace = options.namespace or default_namespace(principal.name, cube_id)
    governance.check(principal, "write", namespace, MemoryKind.PLAINTEXT)
    dump = await asyncio.to_thread(read_memos_dump, files, namespace, vault.limits,
                                   allow_pickle=options.allow_pickle, now=vault.clock())
    report = ImportReport(format="memos-dump", notes=list(dump.notes))
    if dump.layouts:
        report.notes.insert(0, f"read MemOS {', '.join(dump.layouts)}" + ("" if config else " (no config.json)"))
    if not principal.admin:
        _links_to_agent_ids(dump.cubes, principal.name)
    for start in range(0, len(dump.cubes), BATCH):
        stored, skipped, renamed = await import_cubes(vault, dump.cubes[start:start + BATCH], principal.name,
                                                      f"memos:{cube_id}", keep_ids=principal.admin)
        report.cubes += stored
        report.skipped += skipped
        report.renamed += renamed
    if dump.kv:
        report.notes.append(
            f"{len(dump.kv)} KV caches (for {dump.model or 'an unnamed model'}) were read with the restricted"
            " unpickler and checked, but not stored: a MemOS dump carries no model fingerprint, which memosd"
            " needs to bind a cache to its model; pass --model DIR (a local copy of that model) to memosctl"
            " import to bind and store them")
    return report


def _links_to_agent_ids(cubes: list[MemCube], agent: str) -> None:
    """An agent's import gives each cube agent_id(agent, id): the links between them follow (they name cubes
    of the dump only: link_cubes refused any other)."""
    for cube in cubes:
        links = (cube.metadata or {}).get("memos_links")
        if isinstance(links, list):
            cube.metadata = {**(cube.metadata or {}), "memos_links": [
                {**link, "to": agent_id(agent, link["to"])} if isinstance(link, dict) and isinstance(link.get("to"), str)
                else link for link in links]}
