"""Checks that a cube one may not read is answered exactly as an id that names no cube."""

import pytest

from memos_client import MemosError, NotFound

UNKNOWN_ID = "01JAAAAAAAAAAAAAAAAAAAAAAA"  # a well-formed id that no test's daemon gives out


def answer(call, cube_id: str) -> tuple[type, str]:
    """What call(cube_id) raises: its class, and its message with the id written as <id>."""
    with pytest.raises(MemosError) as info:
        call(cube_id)
    return type(info.value), str(info.value).replace(cube_id, "<id>")


def assert_hidden(call, cube_id: str) -> None:
    """call(cube_id) says NotFound, in the very words it says for an unknown id: nothing shows that the
    cube exists."""
    said = answer(call, cube_id)
    assert said[0] is NotFound and said == answer(call, UNKNOWN_ID), said
