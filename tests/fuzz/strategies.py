"""Shared Hypothesis settings and input strategies of the fuzz package.

Every test here is reproducible: `derandomize=True` draws the same examples on every run (CI and
locally alike) and no example database is written into the work tree. Budgets are per test so the
whole package stays well under a minute on a 2-core machine.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,  # the machine is shared; a slow example is not a failure
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=False,
)
"""Pure-function properties: cheap, so a couple of hundred examples each."""

FUZZ_HTTP = settings(FUZZ, max_examples=150)
"""Requests against an in-process aiohttp app: each example is a real HTTP round trip."""

# Characters that make parsers stumble: separators, escapes, controls, non-ASCII, lone surrogates.
_NASTY = "/%?#&=;:.,+-_ \t\r\n\x00\x7f\\\"'{}[]()<>*~!@$^|`éµμ\u2028\ufeff\U0001f600\ud800\udfff"

nasty_text = st.text(alphabet=st.sampled_from(_NASTY) | st.characters(), max_size=40)
"""Any text, biased towards the characters above (lone surrogates included)."""

utf8_text = st.text(
    alphabet=st.sampled_from(_NASTY.replace("\ud800", "").replace("\udfff", ""))
    | st.characters(exclude_categories=("Cs",)),
    max_size=40,
)
"""Like `nasty_text` but always encodable as UTF-8 (what a decoded request target holds)."""

segment = st.one_of(
    st.sampled_from(["restate", "call", "send", "scope", "attach", "output", "lookup", "invocation",
                     "workflow", "awakeables", "a", "health", "openapi", "Greeter", "Counter", "Signup",
                     "greet", "add", "run", "resolve", "reject", "send", "", "%", "%ff", "%2F", "%E2%82",
                     "inv_1fvjNosHQLWq590VmVAH6jxQ707nGGCS8v", "sign_1", ".", ".."]),
    utf8_text,
)
"""One path segment: mostly the ingress grammar's own words, sometimes anything."""

path = st.lists(segment, max_size=9).map(lambda parts: "/" + "/".join(parts))
"""A request path built from segments (raw, not percent-encoded)."""

json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), utf8_text,
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(utf8_text, inner, max_size=4),
    max_leaves=12,
)
"""Any JSON document whose strings are valid Unicode (no lone surrogates)."""


def deep(depth: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    """A JSON document nested `depth` levels deep (`[[[...]]]` by default)."""
    return opener * depth + closer * depth
