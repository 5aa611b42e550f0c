"""Resolved invocation targets, computed once per schema snapshot (Restate `InvocationTargetMetadata`).

`Targets.resolve(service, handler)` returns a `Target` holding everything the hot path needs:
handler kind, visibility, input validation rules, output content type and retention. Results
are cached until the schema callable returns a different snapshot object.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ingress.dispatcher import HandlerKind
from ingress.errors import BadRequest, NotFound
from ingress.handlers.responses import DEFAULT_OUTPUT_RULE, OutputRule
from shardgate.schema import (
    RESTATE_DEFAULTS,
    HandlerMeta,
    HandlerType,
    SchemaSnapshot,
    ServiceMeta,
    ServiceType,
    SettingDefaults,
    effective_settings,
)

PRIVATE_SERVICE = "the invoked service is not public"
_INPUT_ERROR = "input validation error: "
_NO_BODY, _CONTENT_TYPE, _JSON_VALUE = 0, 1, 2


def _debug_str(s: str) -> str:
    """Escape like Rust's `{:?}` for the ASCII header values that reach here."""
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t")


@dataclass(frozen=True, slots=True)
class InputRule:
    """One accepted input shape; input passes if any rule of the handler passes."""

    kind: int  # _NO_BODY | _CONTENT_TYPE | _JSON_VALUE
    mime: str = "*"  # "*" = any content type
    subtype: str = "*"  # "*" = any subtype

    @classmethod
    def parse(cls, kind: int, content_type: str) -> InputRule:
        mime, _, sub = content_type.strip().partition("/")
        if not sub or mime == "*":
            return cls(kind)
        return cls(kind, mime, sub)

    def display(self) -> str:
        return f"{self.mime}/{self.subtype}"

    def check(self, content_type: str | None, body: bytes) -> str | None:
        """Restate's `InputValidationError` text, or None when the input passes this rule."""
        if self.kind == _NO_BODY:
            if body or content_type is not None:
                shown = "None" if content_type is None else f'Some("{_debug_str(content_type)}")'
                return f"Expected body and content-type to be empty, but wasn't with content-type '{shown}'"
            return None
        if content_type is None:
            return "Empty content-type"
        if self.mime != "*":
            first, slash, second = content_type.split(";", 1)[0].strip().partition("/")
            if not slash or first != self.mime or (self.subtype != "*" and second != self.subtype):
                return f"Content-type '{content_type}' does not match '{self.display()}'"
        if self.kind == _JSON_VALUE and not body:
            return "Empty body not allowed"
        return None


def input_rules(handler: HandlerMeta) -> tuple[InputRule, ...]:
    """Rules as Restate derives them from the manifest's `input` (`input_rules_from_schema`)."""
    rules = []
    if not handler.input_required:
        rules.append(InputRule(_NO_BODY))
    if handler.input_content_type is not None:
        kind = _JSON_VALUE if handler.input_json_schema is not None else _CONTENT_TYPE
        rules.append(InputRule.parse(kind, handler.input_content_type))
    return tuple(rules)


@dataclass(frozen=True, slots=True)
class Target:
    """A resolved (service, handler) with everything the call/send path needs."""

    service: str
    handler: str
    service_type: ServiceType
    kind: HandlerKind
    public: bool
    workflow_run: bool  # the workflow's main handler (run once per key)
    idempotent_by_default: bool  # Service / VirtualObject: gets a generated idempotency key
    input_rules: tuple[InputRule, ...]
    output: OutputRule
    idempotent_retention_ms: tuple[int, int]  # (completion, journal) with a key or workflow run
    plain_retention_ms: tuple[int, int]  # (completion, journal) otherwise

    def retention(self, idempotent: bool) -> tuple[int, int]:
        """(completion, journal) retention in ms (Restate `compute_retention`)."""
        return self.idempotent_retention_ms if idempotent or self.workflow_run else self.plain_retention_ms

    def validate_input(self, content_type: str | None, body: bytes) -> None:
        """Raise 400 `input validation error: ...` unless some input rule accepts the request."""
        error = "Bad configuration of the input validation rules"
        for rule in self.input_rules:
            found = rule.check(content_type, body)
            if found is None:
                return
            error = found
        raise BadRequest(_INPUT_ERROR + error)


def _kind(service_type: ServiceType, handler_type: HandlerType | None) -> HandlerKind:
    return HandlerKind.of_target(service_type, handler_type)


class Targets:
    """Target resolution over a live schema, cached per snapshot object."""

    def __init__(
        self,
        schema: Callable[[], SchemaSnapshot],
        defaults: SettingDefaults = RESTATE_DEFAULTS,
    ) -> None:
        self._schema = schema
        self._defaults = defaults
        self._snapshot: SchemaSnapshot | None = None
        self._cache: dict[tuple[str, str], Target] = {}

    def snapshot(self) -> SchemaSnapshot:
        """The current snapshot (drops the cache when it changed)."""
        snap = self._schema()
        if snap is not self._snapshot:
            self._snapshot = snap
            self._cache = {}
        return snap

    def service_type(self, service: str) -> ServiceType | None:
        """Latest registered type of `service`, or None (the path parser's lookup)."""
        meta = self.snapshot().services.get(service)
        return None if meta is None else meta.ty

    def resolve(self, service: str, handler: str) -> Target:
        """The public target, or 404 (unknown service/handler) / 400 (not public)."""
        snap = self.snapshot()
        target = self._cache.get((service, handler))
        if target is None:
            meta = snap.services.get(service)
            handler_meta = None if meta is None else meta.handlers.get(handler)
            if meta is None or handler_meta is None:
                raise NotFound(
                    f"the service '{service}' exists, but the handler '{handler}' was not found, check "
                    "that the handler exists in the latest registered service version."
                )
            target = self._build(meta, handler_meta)
            self._cache[(service, handler)] = target
        if not target.public:
            raise BadRequest(PRIVATE_SERVICE)
        return target

    def output_rule(self, service: str, handler: str | None) -> OutputRule:
        """Output labelling for a stored result; the workflow's run handler when `handler` is None."""
        meta = self.snapshot().services.get(service)
        if meta is None:
            return DEFAULT_OUTPUT_RULE
        if handler is None:
            handler_meta = next((h for h in meta.handlers.values() if h.ty is HandlerType.WORKFLOW), None)
        else:
            handler_meta = meta.handlers.get(handler)
        if handler_meta is None:
            return DEFAULT_OUTPUT_RULE
        return OutputRule(handler_meta.output_content_type, handler_meta.output_set_content_type_if_empty)

    def _build(self, svc: ServiceMeta, h: HandlerMeta) -> Target:
        settings = effective_settings(svc, h, self._defaults)
        completion, journal = settings.completion_retention_ms, settings.journal_retention_ms
        return Target(
            service=svc.name,
            handler=h.name,
            service_type=svc.ty,
            kind=_kind(svc.ty, h.ty),
            public=svc.public and h.public,
            workflow_run=svc.ty is ServiceType.WORKFLOW and h.ty is HandlerType.WORKFLOW,
            idempotent_by_default=svc.ty is not ServiceType.WORKFLOW,
            input_rules=input_rules(h),
            output=OutputRule(h.output_content_type, h.output_set_content_type_if_empty),
            idempotent_retention_ms=(completion, min(journal, completion)),
            plain_retention_ms=(journal, journal) if journal > 0 else (0, 0),
        )
