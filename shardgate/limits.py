"""The flow-control rule book: rule model, validation, Restate's JSON shape and matching.

PURE module: no I/O. The admin API (`ingress/admin/limits.py`) validates and renders rules with it
and stores them through `RuleStore`-like code of its own; partition workers match every scoped
invocation against the current `RuleBook` to find the concurrency bucket it counts against.

Patterns have one to three `/`-separated components, each `*` or a restricted value (1-36 bytes of
`[A-Za-z0-9_.-]`): level 1 is the scope, levels 2 and 3 the limit key's components. A pattern of
`n` components matches an invocation whose path (scope, l1, l2) has at least `n` components when
every component is `*` or equal. The most specific match wins: patterns are compared level by
level from the scope down, exact beats `*`, `*` beats a missing level (so `s/l1` > `s/*` > `s` >
`*/l1` > `*`). A `*` means "per value": the counter of a match (its `bucket`) is the invocation's
own path cut to the pattern's length, so `*` with concurrency 5 gives every scope 5 slots and
`s/*` gives every first limit-key component of scope `s` 5 slots.

Beyond Restate a rule may also cap the start rate (`rate` `<n>/s|m|h`, `burst`, a token bucket per
bucket) and refuse instead of queueing (`on_limit: reject`); `Limits.admission()` is what the
partition's Lua needs of a rule (docs/rate-limits.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

WILDCARD = "*"
MAX_COMPONENTS = 3
_RESTRICTED = re.compile(r"[A-Za-z0-9_.\-]+")
_RESTRICTED_MAX_BYTES = 36
_RATE_UNITS_S = {"s": 1.0, "m": 60.0, "h": 3600.0}
MAX_RATE_COUNT = 1_000_000
MAX_BURST = 1_000_000
ON_LIMIT_QUEUE = "queue"
ON_LIMIT_REJECT = "reject"
DEFAULT_BURST = 1
UNLIMITED = 1 << 30
"""The concurrency limit of a bucket no concurrency rule caps (a rate-only rule, or no rule any more)."""


class RuleError(ValueError):
    """A rule, pattern or request body that is not valid; the message is shown to the caller."""


def component_error(value: str) -> str | None:
    """Why `value` is no valid scope / limit-key component (Restate's texts), or None."""
    if not value:
        return "value cannot be empty"
    size = len(value.encode())
    if size > _RESTRICTED_MAX_BYTES:
        return f"value too long: {size} bytes (max {_RESTRICTED_MAX_BYTES})"
    if not _RESTRICTED.fullmatch(value):
        return "value contains characters outside the allowed set [a-zA-Z0-9_.-]"
    return None


def parse_pattern(pattern: str) -> tuple[str, ...]:
    """The components of a rule pattern. Raises RuleError for a malformed one."""
    if not isinstance(pattern, str) or not pattern:
        raise RuleError("invalid pattern: the pattern cannot be empty")
    parts = tuple(pattern.split("/"))
    if len(parts) > MAX_COMPONENTS:
        raise RuleError(f"invalid pattern '{pattern}': too many components (max {MAX_COMPONENTS})")
    for part in parts:
        if part == WILDCARD:
            continue
        err = component_error(part)
        if err is not None:
            raise RuleError(f"invalid pattern '{pattern}': {err}")
    return parts


def parse_rate(text: object) -> float:
    """Tokens per second of a rate like `20/s`, `100/m`, `5/h` (count 1..MAX_RATE_COUNT).
    Raises RuleError."""
    if not isinstance(text, str):
        raise RuleError("invalid limits: rate must be a string like \"100/s\", \"20/m\" or \"5/h\"")
    count, sep, unit = text.partition("/")
    if not sep or unit not in _RATE_UNITS_S or not count.isdigit() or not 1 <= int(count) <= MAX_RATE_COUNT:
        raise RuleError(f"invalid rate '{text}': expected <count>/s, <count>/m or <count>/h"
                        f" with a count of 1 to {MAX_RATE_COUNT}")
    return int(count) / _RATE_UNITS_S[unit]


def rate_interval_ms(rate: str) -> float:
    """Milliseconds between two tokens of a rate like `20/s` (50.0). Raises RuleError."""
    return 1000.0 / parse_rate(rate)


@dataclass(frozen=True, slots=True)
class Limits:
    """What a rule caps: concurrent invocations, and (beyond Restate) a start rate."""

    concurrency: int | None = None
    rate: str | None = None  # "<count>/s|m|h"; a token bucket of `burst` tokens
    burst: int | None = None
    on_limit: str = ON_LIMIT_QUEUE  # queue (wait) | reject (429)

    @classmethod
    def parse(cls, raw: object) -> Limits:
        """From the JSON `limits` object. Raises RuleError."""
        if not isinstance(raw, Mapping):
            raise RuleError("invalid limits: expected an object")
        unknown = set(raw) - {"concurrency", "rate", "burst", "on_limit"}
        if unknown:
            raise RuleError(f"invalid limits: unknown field(s) {', '.join(sorted(unknown))}")
        conc = raw.get("concurrency")
        if conc is not None and (isinstance(conc, bool) or not isinstance(conc, int) or conc < 1):
            raise RuleError("invalid limits: concurrency must be a positive integer")
        rate = raw.get("rate")
        if rate is not None:
            parse_rate(rate)
        burst = raw.get("burst")
        if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int)
                                  or not 1 <= burst <= MAX_BURST):
            raise RuleError(f"invalid limits: burst must be an integer from 1 to {MAX_BURST}")
        if burst is not None and rate is None:
            raise RuleError("invalid limits: burst needs a rate")
        on_limit = raw.get("on_limit", ON_LIMIT_QUEUE)
        if on_limit not in (ON_LIMIT_QUEUE, ON_LIMIT_REJECT):
            raise RuleError("invalid limits: on_limit must be 'queue' or 'reject'")
        # neither: an unlimited rule (`restate rules set P --unlimited`), which lifts a broader one
        return cls(conc, rate, burst, on_limit)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.concurrency is not None:
            out["concurrency"] = self.concurrency
        if self.rate is not None:
            out["rate"] = self.rate
        if self.burst is not None:
            out["burst"] = self.burst
        if self.on_limit != ON_LIMIT_QUEUE:
            out["on_limit"] = self.on_limit
        return out

    def admission(self) -> str:
        """What the Lua admission of a bucket under these limits needs (`_scope.lua` `vq_parse`):
        `<concurrency>` for a queueing concurrency-only rule (the common case, as before), else
        `<concurrency>|<ms per token>|<burst>|<queue or reject>` (`UNLIMITED` concurrency and an
        empty interval for what the rule does not cap)."""
        conc = UNLIMITED if self.concurrency is None else self.concurrency
        if self.rate is None and self.on_limit == ON_LIMIT_QUEUE:
            return str(conc)
        interval = "" if self.rate is None else f"{rate_interval_ms(self.rate):.6f}"
        burst = DEFAULT_BURST if self.burst is None else self.burst
        return f"{conc}|{interval}|{burst}|{self.on_limit}"


@dataclass(frozen=True, slots=True)
class RuleInput:
    """One element of a `PUT /limits/rules` body."""

    pattern: str
    limits: Limits
    description: str | None = None
    disabled: bool = False
    expected_version: int | None = None  # precondition: the stored version (0: must not exist)

    @classmethod
    def parse(cls, raw: object) -> RuleInput:
        """Raises RuleError."""
        if not isinstance(raw, Mapping):
            raise RuleError("invalid rule: expected an object")
        pattern = raw.get("pattern")
        parse_pattern(pattern)  # type: ignore[arg-type]
        assert isinstance(pattern, str)
        description = raw.get("description")
        if description is not None and not isinstance(description, str):
            raise RuleError("invalid rule: description must be a string")
        disabled = raw.get("disabled", False)
        if not isinstance(disabled, bool):
            raise RuleError("invalid rule: disabled must be a boolean")
        return cls(pattern, Limits.parse(raw.get("limits")), description, disabled,
                   _precondition(raw.get("precondition")))


PRECONDITION_FORMS = ('{"type": "none"}, {"type": "does_not_exist"}, {"type": "matches", "version": <version>} '
                      'or {"expected_version": <version>}')


def _precondition(raw: object) -> int | None:
    """The expected version of a `precondition` (0: the rule must not exist; None: any). Takes
    what the `restate` CLI 1.7.12 sends (`{"type": "none" | "does_not_exist" | "matches",
    "version"}`) and the short form `{"expected_version": n}`. Raises RuleError."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise RuleError(f"invalid precondition: expected {PRECONDITION_FORMS}")
    if "type" in raw:
        return _typed_precondition(raw)
    if set(raw) - {"expected_version"}:
        raise RuleError(f"invalid precondition: expected {PRECONDITION_FORMS}")
    return _version(raw.get("expected_version"), "expected_version")


def _typed_precondition(raw: Mapping[str, object]) -> int | None:
    kind = raw.get("type")
    if kind == "none" and set(raw) == {"type"}:
        return None
    if kind == "does_not_exist" and set(raw) == {"type"}:
        return 0
    if kind == "matches" and set(raw) == {"type", "version"} and raw.get("version") is not None:
        return _version(raw.get("version"), "version")
    raise RuleError(f"invalid precondition: expected {PRECONDITION_FORMS}")


def _version(version: object, name: str) -> int | None:
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise RuleError(f"invalid precondition: {name} must be a non-negative integer")
    return version


@dataclass(frozen=True, slots=True)
class Rule:
    """A stored rule (what `PUT` answers and `GET` lists)."""

    pattern: str
    limits: Limits
    description: str | None = None
    disabled: bool = False
    version: int = 1
    last_modified_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        """Restate's shape: description only when set."""
        out: dict[str, Any] = {"pattern": self.pattern, "limits": self.limits.to_json()}
        if self.description is not None:
            out["description"] = self.description
        out["disabled"] = self.disabled
        out["version"] = self.version
        out["last_modified_millis_since_epoch"] = self.last_modified_ms
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Rule:
        """From `to_json()`'s output (stored form). Raises RuleError."""
        try:
            return cls(str(raw["pattern"]), Limits.parse(raw["limits"]), raw.get("description"),
                       bool(raw.get("disabled", False)), int(raw["version"]),
                       int(raw["last_modified_millis_since_epoch"]))
        except (KeyError, TypeError, ValueError) as e:
            raise RuleError(f"unreadable stored rule: {e}") from e

    def updated(self, new: RuleInput, now_ms: int) -> Rule:
        """This rule replaced by `new` (version + 1)."""
        return replace(self, limits=new.limits, description=new.description, disabled=new.disabled,
                       version=self.version + 1, last_modified_ms=now_ms)


def specificity(parts: tuple[str, ...]) -> tuple[int, ...]:
    """Sort key of a pattern: per level 2 = exact, 1 = `*`, 0 = missing; higher wins."""
    return tuple(0 if i >= len(parts) else (1 if parts[i] == WILDCARD else 2) for i in range(MAX_COMPONENTS))


def matches(parts: tuple[str, ...], path: tuple[str, ...]) -> bool:
    """Whether a pattern's components match an invocation's (scope, l1[, l2]) path."""
    if len(parts) > len(path):
        return False
    return all(p == WILDCARD or p == v for p, v in zip(parts, path, strict=False))


def invocation_path(scope: str, limit_key: str | None) -> tuple[str, ...]:
    """(scope, l1[, l2]) of an invocation."""
    return (scope, *limit_key.split("/")) if limit_key else (scope,)


@dataclass(frozen=True, slots=True)
class Match:
    """The rule an invocation falls under and the counter (bucket) it uses."""

    rule: Rule
    bucket: str  # the invocation's path cut to the pattern's length, '/'-joined


@dataclass(frozen=True)
class RuleBook:
    """An immutable snapshot of every rule; `match` is the hot-path lookup."""

    rules: Mapping[str, Rule] = field(default_factory=dict)
    version: int = 0
    _ordered: tuple[tuple[tuple[str, ...], Rule], ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        enabled = [(parse_pattern(r.pattern), r) for r in self.rules.values() if not r.disabled]
        enabled.sort(key=lambda pr: specificity(pr[0]), reverse=True)
        object.__setattr__(self, "_ordered", tuple(enabled))

    @classmethod
    def of(cls, rules: Iterable[Rule], version: int = 0) -> RuleBook:
        return cls({r.pattern: r for r in rules}, version)

    def match(self, scope: str, limit_key: str | None) -> Match | None:
        """The most specific enabled rule matching the invocation, or None (unlimited)."""
        if not self._ordered:
            return None
        path = invocation_path(scope, limit_key)
        for parts, rule in self._ordered:
            if matches(parts, path):
                return Match(rule, "/".join(path[: len(parts)]))
        return None

    def bucket_limit(self, bucket: str) -> int | None:
        """The concurrency limit now in force for an existing bucket: that of the most specific
        enabled rule that still counts it as one bucket; None when no rule does (its queue then
        drains without limit)."""
        parts = bucket.split("/")
        found = self.match(parts[0], "/".join(parts[1:]) or None)
        if found is None or found.bucket != bucket:
            return None
        return found.rule.limits.concurrency

    def bucket_admission(self, bucket: str) -> str:
        """`Limits.admission()` of the rule now in force for an existing bucket (as `bucket_limit`
        finds it); `UNLIMITED` when no rule counts it any more (its queue drains)."""
        parts = bucket.split("/")
        found = self.match(parts[0], "/".join(parts[1:]) or None)
        if found is None or found.bucket != bucket:
            return str(UNLIMITED)
        return found.rule.limits.admission()

    def rule_of(self, bucket: str) -> str | None:
        """The pattern of the rule that counts `bucket` now, or None (bounded metric labels)."""
        parts = bucket.split("/")
        found = self.match(parts[0], "/".join(parts[1:]) or None)
        return None if found is None or found.bucket != bucket else found.rule.pattern

    def listed(self) -> list[Rule]:
        """Every rule, sorted by pattern."""
        return [self.rules[p] for p in sorted(self.rules)]


# ---- the stored form (Redis hash `sg:limits`) ----------------------------------------------------
# `v` holds the rule book's version (bumped by every change); `r:<pattern>` one rule's JSON
# (`Rule.to_json`). Writers: the admin API; readers: every partition worker, polling `v`.

RULES_KEY = "sg:limits"
VERSION_FIELD = "v"
RULE_FIELD_PREFIX = "r:"


def rule_field(pattern: str) -> str:
    return RULE_FIELD_PREFIX + pattern


def book_from_hash(raw: Mapping[bytes | str, bytes | str]) -> RuleBook:
    """The rule book of an HGETALL of `RULES_KEY`; unreadable rules are skipped (never fatal to
    a worker). Raises nothing."""
    rules: list[Rule] = []
    version = 0
    for name, value in raw.items():
        key = name.decode() if isinstance(name, bytes) else name
        if key == VERSION_FIELD:
            version = int(value)
        elif key.startswith(RULE_FIELD_PREFIX):
            try:
                rules.append(Rule.from_json(json.loads(value)))
            except (RuleError, ValueError):
                continue
    return RuleBook.of(rules, version)


# ---- the vqueue keys of a partition (written by partition/lua/_scope.lua, read by the admin API) --


def vqueue_key(partition: int, suffix: str) -> str:
    """`sg:{pI}:vq:<suffix>`: `run:<bucket>`, `lim`, `rr:<bucket>`, `q:<bucket>|<limit key>`, `buckets`,
    and for rate rules `rate` (bucket -> `<ms per token>|<burst>`) and `tat` (bucket -> the token
    bucket's theoretical arrival time in ms, GCRA)."""
    return f"sg:{{p{partition}}}:vq:{suffix}"


def in_scope(bucket: str, scope: str) -> bool:
    """Whether a bucket counts invocations of `scope` (it is the scope or starts with `scope/`)."""
    return bucket == scope or bucket.startswith(scope + "/")


@dataclass(frozen=True, slots=True)
class QueueView:
    """One limit key's queue of a bucket as read from its partition."""

    limit_key: str  # '' = none
    queued: int
    oldest_age_ms: int | None  # how long its head has waited (None: unknown, e.g. just cancelled)


@dataclass(frozen=True, slots=True)
class BucketView:
    """One bucket of a partition: how many hold a slot, and its queues."""

    bucket: str
    running: int
    queues: tuple[QueueView, ...] = ()

    @property
    def queued(self) -> int:
        return sum(q.queued for q in self.queues)

    @property
    def oldest_age_ms(self) -> int | None:
        return max((q.oldest_age_ms for q in self.queues if q.oldest_age_ms is not None), default=None)

    @property
    def scope(self) -> str:
        return self.bucket.split("/", 1)[0]
