"""The one exception of the dev supervisor."""

from __future__ import annotations


class DevError(RuntimeError):
    """Start-up or supervision of the dev cluster failed; the message says what and where to look."""
