"""Ingress error family (the one HTTP status table lives at the bottom of this module).

Every error answered to a client is an `IngressError`: status, message and source
(`ingress` or `invocation`), rendered as {"code","message","source"} with the
`x-restate-error-source` header.
"""

from __future__ import annotations


class IngressError(Exception):
    """Base of every error the ingress answers with a JSON body."""

    status: int = 500
    source: str = "ingress"

    def __init__(self, message: str, *, invocation_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.invocation_id = invocation_id


class InvocationNotFound(IngressError):
    """No invocation with that id (never existed, or purged)."""

    status = 404


class InvocationNotReady(IngressError):
    """The invocation exists but has not completed (output only)."""

    status = 470


class PartitionUnavailable(IngressError):
    """No worker could be reached for the partition within the deadline; retry is safe with an idempotency key."""

    status = 503

    def __init__(self, message: str, *, retry_after_s: float = 1.0, invocation_id: str | None = None) -> None:
        super().__init__(message, invocation_id=invocation_id)
        self.retry_after_s = retry_after_s
