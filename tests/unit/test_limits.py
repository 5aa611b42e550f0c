"""The flow-control rule book (shardgate.limits): patterns, validation, Restate's JSON shape and the
most-specific match with its counter bucket."""

from __future__ import annotations

import json

import pytest

from shardgate.limits import (
    RULES_KEY,
    Limits,
    Rule,
    RuleBook,
    RuleError,
    RuleInput,
    book_from_hash,
    parse_pattern,
    parse_rate,
    rule_field,
    specificity,
)


def _rule(pattern: str, concurrency: int = 1, disabled: bool = False) -> Rule:
    return Rule(pattern, Limits(concurrency=concurrency), disabled=disabled)


@pytest.mark.parametrize("pattern", ["*", "s", "s/l1", "s/*", "*/l1", "s/l1/l2", "s/*/l2", "*/*/*", "a.b-c_9"])
def test_valid_patterns(pattern: str) -> None:
    assert "/".join(parse_pattern(pattern)) == pattern


@pytest.mark.parametrize(("pattern", "why"), [
    ("", "cannot be empty"), ("a/b/c/d", "too many components"), ("a//b", "value cannot be empty"),
    ("bad scope", "outside the allowed set"), ("x" * 37, r"value too long: 37 bytes \(max 36\)"),
])
def test_invalid_patterns(pattern: str, why: str) -> None:
    with pytest.raises(RuleError, match=why):
        parse_pattern(pattern)


def test_the_most_specific_rule_wins() -> None:
    book = RuleBook.of([_rule("*", 100), _rule("s", 50), _rule("s/*", 5), _rule("*/vip", 20), _rule("s/u1", 1),
                        _rule("s/*/l2", 3)])
    def winner(scope: str, lk: str | None) -> str | None:
        m = book.match(scope, lk)
        return None if m is None else m.rule.pattern

    assert winner("s", "u1") == "s/u1"  # exact beats wildcard
    assert winner("s", "u2") == "s/*"
    assert winner("s", None) == "s"  # a pattern longer than the path never matches
    assert winner("t", "vip") == "*/vip"
    assert winner("t", None) == "*"
    assert winner("s", "u2/l2") == "s/*/l2"
    assert winner("s", "vip") == "s/*"  # the scope level weighs most: s/* beats */vip
    assert specificity(("s",)) > specificity(("*", "l1")) > specificity(("*",))


def test_a_wildcard_counts_per_value() -> None:
    book = RuleBook.of([_rule("*", 5), _rule("s/*", 2)])
    assert book.match("a", None).bucket == "a"  # type: ignore[union-attr]
    assert book.match("b", "x").bucket == "b"  # type: ignore[union-attr]
    assert book.match("s", "u1/l2").bucket == "s/u1"  # type: ignore[union-attr]
    assert book.match("s", "u2").bucket == "s/u2"  # type: ignore[union-attr]


def test_disabled_rules_and_an_empty_book_match_nothing() -> None:
    assert RuleBook().match("s", None) is None
    book = RuleBook.of([_rule("s", 1, disabled=True)])
    assert book.match("s", None) is None
    assert RuleBook.of([_rule("s", 1, disabled=True), _rule("*", 9)]).match("s", None).rule.pattern == "*"  # type: ignore[union-attr]


def test_put_body_validation() -> None:
    # the preconditions the restate CLI 1.7.12 sends
    assert RuleInput.parse({"pattern": "s", "limits": {}, "precondition": {"type": "does_not_exist"}}
                           ).expected_version == 0
    assert RuleInput.parse({"pattern": "s", "limits": {"concurrency": 1}, "precondition": {"type": "matches",
                                                                                          "version": 4}}
                           ).expected_version == 4
    assert RuleInput.parse({"pattern": "s", "limits": {"concurrency": 1}, "precondition": {"type": "none"}}
                           ).expected_version is None
    ok = RuleInput.parse({"pattern": "s/*", "limits": {"concurrency": 3}, "description": "d",
                          "precondition": {"expected_version": 0}})
    assert (ok.pattern, ok.limits.concurrency, ok.description, ok.expected_version) == ("s/*", 3, "d", 0)
    for bad in ({"pattern": "s"}, {"pattern": "s", "limits": {"concurrency": 0}},
                {"pattern": "s", "limits": {"concurrency": True}},
                {"pattern": "s", "limits": {"concurrency": 1, "what": 1}},
                {"pattern": "s", "limits": {"concurrency": 1}, "disabled": "no"},
                {"pattern": "s", "limits": {"concurrency": 1}, "precondition": {"expected_version": -1}},
                {"pattern": "s", "limits": {"concurrency": 1}, "precondition": {"type": "matches"}},
                {"pattern": "s", "limits": {"concurrency": 1}, "precondition": {"type": "later"}},
                {"pattern": "s", "limits": {"rate": "5/d"}}, "s"):
        with pytest.raises(RuleError):
            RuleInput.parse(bad)
    assert parse_rate("20/s") == 20.0 and parse_rate("120/m") == 2.0 and parse_rate("36/h") == 0.01


def test_rules_render_in_restates_shape_and_round_trip() -> None:
    rule = Rule("s", Limits(concurrency=2), None, False, 3, 1700000000000)
    assert rule.to_json() == {"pattern": "s", "limits": {"concurrency": 2}, "disabled": False, "version": 3,
                              "last_modified_millis_since_epoch": 1700000000000}
    described = Rule("s", Limits(concurrency=2), "d", True, 1, 5)
    assert described.to_json()["description"] == "d"
    assert Rule.from_json(described.to_json()) == described
    updated = rule.updated(RuleInput("s", Limits(concurrency=7)), 1800000000000)
    assert (updated.version, updated.limits.concurrency, updated.last_modified_ms) == (4, 7, 1800000000000)


def test_the_stored_hash_decodes_into_a_book() -> None:
    raw = {b"v": b"7", rule_field("s").encode(): json.dumps(_rule("s", 4).to_json()).encode(),
           rule_field("bad").encode(): b"{not json"}
    book = book_from_hash(raw)  # type: ignore[arg-type]
    assert book.version == 7 and list(book.rules) == ["s"]
    assert RULES_KEY == "sg:limits"


def test_the_limit_in_force_for_an_existing_bucket() -> None:
    book = RuleBook.of([_rule("s", 4), _rule("t/*", 2), _rule("*", 9)])
    assert book.bucket_limit("s") == 4
    assert book.bucket_limit("t/u1") == 2
    assert book.bucket_limit("other") == 9
    assert book.bucket_limit("s/u1") is None  # no rule counts per limit key of s any more
    assert RuleBook().bucket_limit("s") is None
