"""A network namespace joined to the root namespace by a veth pair, and iptables DROP rules in it.

`NetNs.create()` makes namespace `sgc-<hex>` with a veth pair: `<host>` (10.250.N.1/30) stays in the
root namespace, `<peer>` (10.250.N.2/30) goes inside, both up, plus the namespace's loopback. Processes
started with `ns.argv(...)` (`ip netns exec`) run inside. `drop(...)` adds an iptables rule inside the
namespace (undone by `undrop`); `destroy()` removes the namespace and the pair. Needs root and the
`ip` and `iptables` commands (`ensure_iptables` installs Debian's package when it is missing, the way
`make lb-tools` installs haproxy).
"""

from __future__ import annotations

import random
import shutil
import subprocess
import uuid
from dataclasses import dataclass

COMMAND_TIMEOUT_S = 30.0
APT_TIMEOUT_S = 300.0


def run(*argv: str) -> str:
    """Run a command; its stdout. Raises subprocess.CalledProcessError (with stderr) on failure."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, argv, done.stdout, done.stderr)
    return done.stdout


def ensure_iptables() -> str:
    """The iptables binary, installed with apt-get when missing; raises RuntimeError when it cannot be."""
    found = shutil.which("iptables") or shutil.which("iptables", path="/usr/sbin:/sbin")
    if found:
        return found
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "iptables"]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=APT_TIMEOUT_S, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr[-2000:]}")
    found = shutil.which("iptables", path="/usr/sbin:/sbin:/usr/bin")
    if not found:
        raise RuntimeError("iptables still missing after apt-get install -y iptables")
    return found


@dataclass
class NetNs:
    name: str
    host_if: str
    peer_if: str
    host_ip: str
    """The root namespace's end of the pair (reachable from inside)."""
    ns_ip: str
    """The namespace's end (where its processes bind)."""
    iptables: str

    @classmethod
    def create(cls) -> NetNs:
        """Make the namespace and the veth pair; raises CalledProcessError / RuntimeError."""
        tag = uuid.uuid4().hex[:6]
        subnet = random.randrange(1, 250)
        ns = cls(f"sgc-{tag}", f"sgh{tag}", f"sgn{tag}", f"10.250.{subnet}.1", f"10.250.{subnet}.2",
                 ensure_iptables())
        run("ip", "netns", "add", ns.name)
        try:
            run("ip", "link", "add", ns.host_if, "type", "veth", "peer", "name", ns.peer_if)
            run("ip", "link", "set", ns.peer_if, "netns", ns.name)
            run("ip", "addr", "add", f"{ns.host_ip}/30", "dev", ns.host_if)
            run("ip", "link", "set", ns.host_if, "up")
            ns.exec("ip", "addr", "add", f"{ns.ns_ip}/30", "dev", ns.peer_if)
            ns.exec("ip", "link", "set", ns.peer_if, "up")
            ns.exec("ip", "link", "set", "lo", "up")
        except BaseException:
            ns.destroy()
            raise
        return ns

    def argv(self, *argv: str) -> list[str]:
        """`argv` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def exec(self, *argv: str) -> str:
        return run(*self.argv(*argv))

    def drop(self, chain: str, *match: str) -> tuple[str, ...]:
        """Append `-A <chain> <match> -j DROP` inside the namespace; returns the rule for `undrop`."""
        rule = (chain, *match, "-j", "DROP")
        self.exec(self.iptables, "-A", *rule)
        return rule

    def undrop(self, rule: tuple[str, ...]) -> None:
        self.exec(self.iptables, "-D", *rule)

    def destroy(self) -> None:
        """Remove the namespace (its end of the pair goes with it) and our end; never raises."""
        for argv in (("ip", "netns", "del", self.name), ("ip", "link", "del", self.host_if)):
            subprocess.run(argv, capture_output=True, timeout=COMMAND_TIMEOUT_S, check=False)
