"""Ingress error family (the one HTTP status table lives at the bottom of this module).

Every error answered to a client is an `IngressError`: status, message and source
(`ingress` or `invocation`). The ingress API renders it as {"code","message","source"} with the
`x-restate-error-source` header (and `x-restate-id` when `invocation_id` is set); the admin API
renders it as {"message","restate_code"}. Both take the status from the one table below.
Messages follow Restate 1.7 (`crates/ingress-http/src/handler/error.rs`,
`crates/admin/src/rest_api/error.rs`) word for word.
"""

from __future__ import annotations

from collections.abc import Iterable


class IngressError(Exception):
    """Base of every error the ingress and admin APIs answer (see the module docstring for shapes)."""

    status: int = 500
    source: str = "ingress"

    def __init__(
        self, message: str, *, invocation_id: str | None = None, restate_code: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.invocation_id = invocation_id
        self.restate_code = restate_code  # Restate's error code (`META0003` ...), admin API only


class BadRequest(IngressError):
    """The request is malformed: path shape, header, query parameter, body or target rules."""


class NotFound(IngressError):
    """Unknown route, service or handler (`not found`, `service '<s>' not found, ...`)."""


class MethodNotAllowed(IngressError):
    """The HTTP method is not accepted on this path."""

    def __init__(self, message: str = "method not allowed", *, invocation_id: str | None = None) -> None:
        super().__init__(message, invocation_id=invocation_id)


class RouteNotFound(NotFound):
    """No admin route matches the path (a JSON 404 like every other admin error)."""

    def __init__(self, method: str, path: str) -> None:
        super().__init__(f"no admin route for {method} {path}")


class RouteMethodNotAllowed(MethodNotAllowed):
    """An admin path that exists, but not with this method; a JSON 405 with an `allow` header
    (GET and HEAD first, then the rest alphabetically, as Restate lists them)."""

    def __init__(self, method: str, path: str, allowed: Iterable[str]) -> None:
        super().__init__(f"{method} is not allowed on {path}")
        methods = set(allowed)
        first = [m for m in ("GET", "HEAD") if m in methods]
        self.allowed: tuple[str, ...] = (*first, *sorted(methods - set(first)))


class PayloadTooLarge(IngressError):
    """The request body exceeds the configured `max_body_bytes`."""

    def __init__(
        self, message: str = "cannot read body: length limit exceeded", *, invocation_id: str | None = None
    ) -> None:
        super().__init__(message, invocation_id=invocation_id)


class Overloaded(IngressError):
    """The ingress concurrency limit is exhausted (load shedding); retrying later is safe."""

    def __init__(
        self,
        message: str = "too many requests, the ingress is overloaded. Retry later.",
        *,
        retry_after_s: float = 1.0,
        invocation_id: str | None = None,
    ) -> None:
        super().__init__(message, invocation_id=invocation_id)
        self.retry_after_s = retry_after_s


class ScopeLimited(IngressError):
    """A scope's `on_limit: reject` rule refused the call or send: its rate (or concurrency) limit
    has no room now; nothing was stored, and retrying after `retry_after_s` may succeed."""

    def __init__(self, message: str = "too many requests: the scope's limit is reached. Retry later.", *,
                 retry_after_s: float = 1.0, invocation_id: str | None = None) -> None:
        super().__init__(message, invocation_id=invocation_id)
        self.retry_after_s = retry_after_s


class PartitionBusy(IngressError):
    """The partition's worker refused a call before storing anything: every invocation it can hold
    in memory is taken and its backlog bound is reached (docs/operations.md, "Bounded memory").
    Retrying after `retry_after_s` is safe; sends are still accepted."""

    def __init__(self, message: str = "too many requests: the partition is too busy. Retry later.", *,
                 retry_after_s: float = 1.0, invocation_id: str | None = None) -> None:
        super().__init__(message, invocation_id=invocation_id)
        self.retry_after_s = retry_after_s


class OutputNotSupported(BadRequest):
    """Output/attach is not possible for this invocation (no retained completion)."""

    def __init__(
        self,
        message: str = (
            "cannot get output for the given invocation. You can get output only for invocations "
            "created with an idempotency key, or for workflow methods."
        ),
        *,
        invocation_id: str | None = None,
    ) -> None:
        super().__init__(message, invocation_id=invocation_id)


class InvocationNotFound(IngressError):
    """No invocation with that id (never existed, or purged)."""


class InvocationNotReady(IngressError):
    """The invocation exists but has not completed (output only)."""


class PartitionUnavailable(IngressError):
    """No worker could be reached for the partition within the deadline; retry is safe with an idempotency key."""

    def __init__(self, message: str, *, retry_after_s: float = 1.0, invocation_id: str | None = None) -> None:
        super().__init__(message, invocation_id=invocation_id)
        self.retry_after_s = retry_after_s


class Conflict(IngressError):
    """The request conflicts with what is registered (deployment exists, service type change)."""


class TooEarly(IngressError):
    """A command the invocation cannot take yet: resuming one that has not started (admin API)."""


class Gone(IngressError):
    """What a command needs is no longer kept: restart-as-new of an invocation whose journal (its
    input) was not retained or was purged (admin API)."""


class UnsupportedMediaType(IngressError):
    """The admin API expected a JSON body (`Content-Type: application/json`)."""


class UnprocessableEntity(IngressError):
    """A JSON body that parses but does not have the expected shape (admin API)."""


class DeploymentError(IngressError):
    """The deployment could not be discovered or answered an unusable manifest (admin API).

    `restate_code` names Restate's code when there is one (`META0003` unreachable, `META0012`
    unsupported protocol, `META0013` bad response).
    """


class RegistryUnavailable(IngressError):
    """The schema registry (Redis) is unreachable or too contended; nothing changed, retry is safe."""


class InternalError(IngressError):
    """An unexpected failure inside the ingress (logged; never carries internals to the client)."""


class Unauthorized(IngressError):
    """No credential, or one that is malformed, expired, unknown or wrongly signed (auth on); the
    answer carries `WWW-Authenticate: Bearer` (`ingress.auth`)."""


class Forbidden(IngressError):
    """A valid credential that is not allowed the target (service, handler, scope or admin API)."""


# ---- the one HTTP status table ------------------------------------------------------------------
# 470 is Restate's own code for "exists but not completed yet".
HTTP_STATUS: dict[type[IngressError], int] = {
    IngressError: 500,
    BadRequest: 400,
    OutputNotSupported: 400,
    NotFound: 404,
    RouteNotFound: 404,
    InvocationNotFound: 404,
    MethodNotAllowed: 405,
    RouteMethodNotAllowed: 405,
    Conflict: 409,
    TooEarly: 425,
    Gone: 410,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    UnprocessableEntity: 422,
    Overloaded: 429,
    ScopeLimited: 429,
    PartitionBusy: 429,
    InvocationNotReady: 470,
    InternalError: 500,
    Unauthorized: 401,
    Forbidden: 403,
    DeploymentError: 500,
    PartitionUnavailable: 503,
    RegistryUnavailable: 503,
}

for _cls, _status in HTTP_STATUS.items():
    _cls.status = _status
del _cls, _status
