"""The chaos suite: real clusters under load, faults injected, the side-effect ledger checked."""
