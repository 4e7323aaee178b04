"""MemScheduler's query plan: for an agent, a query and the model it runs, which memory of each kind to use.

Plaintext: the search hits. Activation: the cube of that model sharing the longest prefix with the prompt's
tokens, else the one built from the largest share of the hits. Adapters: those of that model trained on the
hits (lineage) or tagged like the query and the hits. Hits weigh 1/rank in every share, so the best hit counts
most; each choice carries its score and the reason, for people.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from memosd.cube import CubeFilter, MemCube, MemoryKind, SearchMode
from memosd.errors import InvalidArgument

# Adapter score = LINEAGE_WEIGHT * share of the hits it was trained on + the rest * share of its tags that match.
LINEAGE_WEIGHT = 0.7
MAX_HITS = 100
MAX_ADAPTERS = 20


@dataclass
class Choice:
    """One cube the plan uses, how well it fits (higher is better) and why."""

    cube: MemCube
    score: float
    reason: str


@dataclass
class Plan:
    """What memory to use for a query."""

    plaintext: list[Choice] = field(default_factory=list)
    activation: Choice | None = None
    matched_tokens: int = 0
    adapters: list[Choice] = field(default_factory=list)


def _ids(cubes) -> str:
    ids = [c.id for c in cubes]
    return ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")


class MemPlanner:
    """Plans with the vault (search), the activation vault (prefixes) and the parametric vault (by model)."""

    def __init__(self, vault, activations, parametric):
        self.vault = vault
        self.activations = activations
        self.parametric = parametric

    async def plan(self, query: str, f: CubeFilter, *, model_fingerprint: str = "", token_ids=(), limit: int = 0,
                   max_adapters: int = 0) -> Plan:
        """The plan for `query` over what `f` lets the agent read (its scope, viewer and namespace prefix)."""
        if not 0 <= limit <= MAX_HITS:
            raise InvalidArgument(f"limit must be from 1 to {MAX_HITS} (0 for 5)")
        if not 0 <= max_adapters <= MAX_ADAPTERS:
            raise InvalidArgument(f"max_adapters must be from 1 to {MAX_ADAPTERS} (0 for 3)")
        if model_fingerprint and not re.fullmatch(r"[0-9a-f]{64}", model_fingerprint):
            raise InvalidArgument("model_fingerprint must be empty or a hex sha256 (64 lowercase characters)")
        if token_ids and not model_fingerprint:
            raise InvalidArgument("token_ids need the model_fingerprint of the model they are for")
        text_filter = CubeFilter(namespace_prefix=f.namespace_prefix, kinds=frozenset({MemoryKind.PLAINTEXT}),
                                 scope=f.scope, viewer=f.viewer, reader=f.reader)
        hits, mode = await self.vault.search(query, text_filter, limit or 5, SearchMode.AUTO)
        plan = Plan(plaintext=[Choice(h.cube, h.score, f"{mode.name.lower()} search, rank {i + 1} of {len(hits)}")
                               for i, h in enumerate(hits)])
        if not model_fingerprint:
            return plan
        weights = {h.cube.id: 1.0 / (i + 1) for i, h in enumerate(hits)}
        total = sum(weights.values()) or 1.0

        def share(cube: MemCube) -> tuple[float, list[MemCube]]:
            used = [h.cube for h in hits if h.cube.id in cube.derived_from]
            return sum(weights[c.id] for c in used) / total, used

        if token_ids:
            cube, matched = await self.activations.find_by_prefix(model_fingerprint, list(token_ids), f)
            if cube is not None and matched:
                plan.activation = Choice(cube, matched / len(token_ids),
                                         f"its KV cache covers the first {matched} of the prompt's {len(token_ids)} tokens")
                plan.matched_tokens = matched
        if plan.activation is None and hits:
            built = await self.parametric.of_model(model_fingerprint, f, MemoryKind.ACTIVATION, set(weights))
            scored = sorted(((share(c), c) for c in built), key=lambda x: -x[0][0])
            if scored:
                (score, used), cube = scored[0]
                plan.activation = Choice(cube, score, f"its KV cache was built from {len(used)} of the {len(hits)}"
                                                      f" plaintext hits ({_ids(used)})")
        plan.adapters = await self._adapters(query, hits, model_fingerprint, f, share, max_adapters or 3)
        return plan

    async def _adapters(self, query: str, hits, model_fingerprint: str, f: CubeFilter, share, limit: int) -> list[Choice]:
        words = set(re.findall(r"\w+", query.lower()))
        hit_tags = {t.lower() for h in hits for t in h.cube.tags}
        choices = []
        for cube in await self.parametric.of_model(model_fingerprint, f):
            lineage, used = share(cube)
            tags = [t for t in cube.tags if t.lower() in words or t.lower() in hit_tags]
            if not used and not tags:
                continue
            score = LINEAGE_WEIGHT * lineage + (1 - LINEAGE_WEIGHT) * (len(tags) / len(cube.tags) if cube.tags else 0)
            reasons = []
            if used:
                reasons.append(f"trained on {len(used)} of the {len(hits)} plaintext hits ({_ids(used)})")
            if tags:
                where = "the query" if all(t.lower() in words for t in tags) else (
                    "the hits" if not any(t.lower() in words for t in tags) else "the query and the hits")
                reasons.append(f"tagged {', '.join(tags)}, like {where}")
            choices.append(Choice(cube, score, "; ".join(reasons)))
        choices.sort(key=lambda c: -c.score)  # stable: among equals the newest (of_model's order) first
        return choices[:limit]
