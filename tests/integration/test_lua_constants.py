"""The Lua side takes its constants from the Python definitions (`partition/invocation.py`,
`partition/transition.py`, `partition/keys.py`, `partition/outbox_codec.py`): no `.lua` file spells a status, a hash field, a
handler kind, an opcode or a reply code itself, every constant a script names is generated, and
the generated prelude, run by a real Redis, yields exactly the Python values."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from partition import scripts
from partition.schedules import SCHEDULE_SCRIPTS
from partition.transition import OP_ARGS

LUA_FILES = sorted(scripts.LUA_DIR.glob("*.lua"))
_CONSTANT = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b|\b[A-Z]{2,}\b")
_NOT_CONSTANTS = {"KEYS", "ARGV"}


def _scan(source: str) -> Iterator[tuple[str, str]]:
    """('string', literal text) and ('code', text) pieces of a Lua source, comments dropped."""
    i, n, code = 0, len(source), []
    while i < n:
        ch = source[i]
        if source.startswith("--", i):
            i = source.find("\n", i)
            i = n if i < 0 else i
        elif ch in "'\"":
            j, text = i + 1, []
            while source[j] != ch:
                if source[j] == "\\":
                    text.append(source[j:j + 2])
                    j += 2
                else:
                    text.append(source[j])
                    j += 1
            yield "code", "".join(code)
            code = []
            yield "string", "".join(text)
            i = j + 1
        else:
            code.append(ch)
            i += 1
    yield "code", "".join(code)


def _literals(path: Path) -> list[str]:
    return [text for kind, text in _scan(path.read_text()) if kind == "string"]


def _names_used(source: str) -> set[str]:
    code = " ".join(text for kind, text in _scan(source) if kind == "code")
    return set(_CONSTANT.findall(code)) - _NOT_CONSTANTS


def _generated_strings() -> dict[str, str]:
    """Every generated text constant: value -> its Lua name."""
    return {v: name for name, v in scripts.lua_values().items() if isinstance(v, str)}


def test_the_lua_sources_are_there() -> None:
    names = {p.stem for p in LUA_FILES}
    parts = {part for composed in scripts.COMPOSITION.values() for part in composed}
    fire = set(SCHEDULE_SCRIPTS)
    assert parts | {"_prelude"} | set(scripts.LEASE_SCRIPTS) | fire == names  # nothing unused, nothing missing


@pytest.mark.parametrize("path", LUA_FILES, ids=lambda p: p.name)
def test_no_lua_source_spells_a_generated_constant(path: Path) -> None:
    """Statuses, hash fields, kinds, opcodes, reply codes, timer prefixes: only via their names."""
    generated = _generated_strings()
    bare = [f"'{lit}' (use {generated[lit]})" for lit in _literals(path) if lit in generated]
    assert not bare, f"{path.name} spells generated constants: {', '.join(bare)}"


def test_the_literal_check_would_catch_a_bare_status() -> None:
    """The scanner sees literals in code and ignores them in comments."""
    src = "-- 'invoked' in a comment is fine\nif st == 'invoked' then return {\"st\"} end\n"
    assert [t for k, t in _scan(src) if k == "string"] == ["invoked", "st"]
    assert {"invoked", "st"} <= set(_generated_strings())


@pytest.mark.parametrize("name", sorted(scripts.COMPOSITION))
def test_every_constant_a_script_names_is_generated(name: str) -> None:
    source = scripts.source(name)
    generated = set(scripts.lua_values()) | {"OP_ARGS"}
    prelude_head = scripts.lua_constants()
    used = _names_used(source[len(prelude_head):])
    assert used - generated == set(), f"{name} names constants nobody defines"


def test_every_enum_member_has_one_lua_name() -> None:
    names = [f"{prefix}_{m.name}" for prefix, enum in scripts.LUA_ENUMS for m in enum]
    assert len(names) == len(set(names))
    values = scripts.lua_values()
    for prefix, enum in scripts.LUA_ENUMS:
        for m in enum:
            assert values[f"{prefix}_{m.name}"] == m.value


async def test_the_generated_prelude_yields_the_python_values(redis: Redis) -> None:
    """Run the prelude in Redis: each constant (and OP_ARGS) is exactly the Python value."""
    values = scripts.lua_values()
    names = list(values)
    body = "return {" + ", ".join(names) + "}"
    got = await redis.eval(scripts.lua_constants() + body, 0)
    expected = [v.encode() if isinstance(v, str) else v for v in values.values()]
    assert got == expected
    arity = "return {" + ", ".join(f"OP_ARGS[OP_{code.name}]" for code in OP_ARGS) + "}"
    assert await redis.eval(scripts.lua_constants() + arity, 0) == list(OP_ARGS.values())


@pytest.mark.parametrize("name", sorted(scripts.COMPOSITION) + list(scripts.LEASE_SCRIPTS))
async def test_every_composed_script_compiles_in_redis(redis: Redis, name: str) -> None:
    sha = await redis.script_load(scripts.source(name))
    assert (await redis.script_exists(sha)) == [True]
