"""Property tests: what one side encodes, the other decodes unchanged (tokens, policies, cubes, page tokens)."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from memos_client.auth import AgentKey, canonical, mint_token, read_token, sign_policy, verify_signature
from memos_client.models import Cube
from memosd.cube import CubeFilter, LifecycleState, MemCube, MemoryKind, Visibility
from memosd.governance.policy import parse_policy
from memosd.server.convert import cube_to_proto
from memosd.vault.query import PageTokens

KEY = AgentKey.generate("alice", "memosd-0123456789abcdef")
names = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)
namespaces = st.lists(names, min_size=1, max_size=4).map("/".join)
json_values = st.recursive(st.none() | st.booleans() | st.text(max_size=20) | st.integers(-2**40, 2**40),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=8)


@given(epoch=st.integers(0, 2**31), now=st.integers(0, 2**33), lifetime=st.integers(1, 3600))
def test_tokens_round_trip_and_verify(epoch, now, lifetime):
    token = mint_token(KEY, epoch, lifetime=lifetime, now=now)
    claims, signed, signature = read_token(token)
    assert claims["sub"] == "alice" and claims["aud"] == KEY.audience and claims["epoch"] == epoch
    assert claims["exp"] - claims["iat"] == lifetime
    assert verify_signature(KEY.public_bytes, signed, signature)


@given(subject=names.map(lambda n: f"agent:{n}"), actions=st.sets(st.sampled_from(
    ["read", "write", "delete", "share", "publish", "subscribe", "admin"]), min_size=1),
    patterns=st.lists(st.tuples(namespaces, st.booleans()).map(lambda t: t[0] + ("/**" if t[1] else "")),
                      min_size=1, max_size=4),
    kinds=st.sets(st.sampled_from(["plaintext", "activation", "parametric"])))
def test_signed_policies_parse_back_as_signed(subject, actions, patterns, kinds):
    document, signature = sign_policy(KEY, subject=subject, actions=actions, namespaces=patterns, kinds=kinds)
    assert verify_signature(KEY.public_bytes, document, signature)
    assert canonical(json.loads(document)) == document  # the signed bytes are the canonical encoding
    policy = parse_policy(document)
    assert policy.subject == subject and policy.actions == frozenset(actions) and policy.issuer == "alice"
    assert sorted(map(str, policy.patterns)) == sorted(set(patterns))
    assert {k.name.lower() for k in policy.kinds} == kinds


@settings(max_examples=60)
@given(namespace=namespaces, text=st.text(min_size=1, max_size=200), tags=st.lists(names, max_size=5, unique=True),
       metadata=st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=4),
       version=st.integers(1, 1000), priority=st.integers(-100, 100),
       created=st.integers(0, 2**32), state=st.sampled_from(list(LifecycleState)))
def test_cubes_cross_the_wire_unchanged(namespace, text, tags, metadata, version, priority, created, state):
    cube = MemCube(id="01J9Z3K5Q8W2E4R6T8Y0V2X4N6", namespace=namespace, kind=MemoryKind.PLAINTEXT,
                   created_at=created, updated_at=created + 1, owner="alice", version=version,
                   parent_version=version - 1, state=state, text=text, tags=tuple(tags), metadata=metadata or None,
                   visibility=Visibility.OWNER, priority=priority)
    back = Cube.from_proto(cube_to_proto(cube))
    assert (back.id, back.namespace, back.text, back.tags, back.version, back.parent_version, back.priority) == (
        cube.id, namespace, text, tags, version, version - 1, priority)
    assert back.state.value == state.value and back.created_at.timestamp() == created
    assert json.dumps(back.metadata, sort_keys=True) == json.dumps(metadata, sort_keys=True)  # 3 stays 3, not 3.0


@given(after=st.integers(0, 2**62), total=st.integers(0, 2**40), prefix=st.one_of(st.just(""), namespaces))
def test_page_tokens_round_trip_and_bind_to_their_filter(after, total, prefix):
    tokens = PageTokens(b"k" * 32)
    f = CubeFilter(namespace_prefix=prefix)
    assert tokens.read(tokens.make(after, f, total), f) == (after, total)
