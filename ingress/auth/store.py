"""The credentials of one file, re-read when the file changes (key rotation without a restart).

`CredentialStore.open(path)` reads the file once (a bad file fails the start). Then `run()`
looks at the file's modification time, size and inode every `interval_s` and re-reads it when
one changed; `reload()` (the ingress calls it on SIGHUP) re-reads it at once. A file that no
longer reads or checks keeps the credentials in force and logs why (the error names the entry,
never a secret), so a half-written file never opens or closes the door by accident; write the
new file beside the old one and rename it over.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from ingress.auth.credentials import CredentialsError, load_credentials
from ingress.auth.verifier import Verifier

log = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.05  # a 0 interval would spin the event loop on stat()
FileStamp = tuple[int, int, int]  # (mtime in ns, size in bytes, inode)


def _stamp(path: Path) -> FileStamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class CredentialStore:
    """The current `Verifier` of one credentials file."""

    def __init__(self, path: Path, verifier: Verifier, stamp: FileStamp | None) -> None:
        self.path = path
        self.verifier = verifier
        self._stamp = stamp

    @classmethod
    def open(cls, path: str | Path) -> CredentialStore:
        """Read `path`. Raises CredentialsError when it cannot be read or checked."""
        path = Path(path)
        stamp = _stamp(path)
        store = cls(path, Verifier(load_credentials(path)), stamp)
        store._log_loaded("loaded")
        return store

    def reload(self) -> bool:
        """Re-read the file now; True when the new credentials are in force (errors are logged)."""
        stamp = _stamp(self.path)
        self._stamp = stamp
        try:
            credentials = load_credentials(self.path)
        except CredentialsError as e:
            log.error("credentials not reloaded, the previous ones stay in force: %s", e)
            return False
        self.verifier = Verifier(credentials, self.verifier.clock, self.verifier.cache_entries)
        self._log_loaded("reloaded")
        return True

    def reload_if_changed(self) -> bool:
        """Re-read the file if its stamp changed since the last read; True when it was reloaded."""
        if _stamp(self.path) == self._stamp:
            return False
        return self.reload()

    async def run(self, interval_s: float) -> None:
        """Check the file every `interval_s` (at least `MIN_INTERVAL_S`) until cancelled."""
        interval_s = max(interval_s, MIN_INTERVAL_S)
        while True:
            await asyncio.sleep(interval_s)
            self.reload_if_changed()

    def _log_loaded(self, what: str) -> None:
        credentials = self.verifier.credentials
        log.info("credentials %s", what, extra={"credentials_file": str(self.path),
                                                "api_keys": len(credentials.api_keys),
                                                "jwt_keys": len(credentials.jwt_keys)})
