"""An emulated cluster on one machine: every worker behind its own shaped network link.

``launcher.link=1gbit`` puts each rank in its own network namespace. A Linux bridge in
the root namespace is the switch; each rank has a veth pair, one end in its namespace
(its address) and the other on the bridge. tc's token bucket (``tbf``) on both ends
limits each direction of each link to the rate, so every worker has a full-duplex link
of that rate into a switch, as in a cluster of machines with one NIC each. The bridge
holds the master address, where the launcher's TCP store (root namespace) is reached.

::

    root namespace:   [bridge <tag>b, 10.a.b.1] -- <tag>h0 ... <tag>h<S-1>  (tbf: to the rank)
                                                     |               |
    rank namespaces:                              <tag>w0 ...     <tag>w<S-1> (tbf: from it)
                                                  10.a.b.2        10.a.b.<S+1>

Only rate is emulated: this kernel has no netem qdisc, so no added delay (the links
have veth latency, microseconds). Names carry the owner's pid, so concurrent clusters
never collide and a later cluster removes what a killed owner (kill -9) left behind;
``python -m suite.netem --clean`` does that by hand. Root only (``ip``/``tc``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import fcntl
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suite.config import ConfigError
from suite.dist import die_with_parent

MAX_WORKERS = 250  # one /24 per cluster: the bridge, then one address per rank
NETNS_DIR = Path("/var/run/netns")
LOCK = Path("/run/commbench-netem.lock")
PREFIX = "cb"  # every interface and namespace name starts with this (then the owner)
CLONE_NEWNET = 0x40000000
EXAMPLES = "10gbit, 1gbit, 100mbit, 500kbit"
_UNITS = {  # tc's rate units, in bits per second ("bps" is bytes per second, as in tc)
    "bit": 1,
    "kbit": 10**3,
    "mbit": 10**6,
    "gbit": 10**9,
    "tbit": 10**12,
    "bps": 8,
    "kbps": 8 * 10**3,
    "mbps": 8 * 10**6,
    "gbps": 8 * 10**9,
    "tbps": 8 * 10**12,
}
_RATE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]+)\s*$", re.IGNORECASE)
MIN_RATE, MAX_RATE = 10**4, 10**12  # 10 kbit/s .. 1 tbit/s
_seq = 0
_seq_lock = threading.Lock()


def parse_rate(link: str) -> int:
    """A tc rate (``10gbit``, ``100mbit``, ``500kbit``, ``125mbps``...) in bits per second;
    raises ConfigError naming the valid forms."""
    m = _RATE.match(str(link))
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise ConfigError(
            f"launcher.link={link!r} is not a rate; use a number and a tc unit "
            f"({', '.join(_UNITS)}; bps = bytes/s), e.g. {EXAMPLES}"
        )
    bits = round(float(m.group(1)) * _UNITS[unit])
    if not MIN_RATE <= bits <= MAX_RATE:
        raise ConfigError(
            f"launcher.link={link!r} is {bits} bit/s, outside 10kbit..1tbit; e.g. {EXAMPLES}"
        )
    return bits


def burst_bytes(rate_bits: int) -> int:
    """tbf's bucket: 2 ms at the rate, at least 64 KiB (a GSO segment), at most 4 MiB.
    Measured: 1gbit → 250 kB and 100mbit → 64 KiB give the nominal rate (environment.md)."""
    return int(min(4 << 20, max(64 << 10, rate_bits // 8 * 2 // 1000)))


def check(link: str, workers: int) -> None:
    """Refuse, before anything starts, an emulated cluster that cannot be built here."""
    parse_rate(link)
    if not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(
            f"launcher.link: an emulated cluster has 1..{MAX_WORKERS} workers (one /24 "
            f"subnet), got workers={workers!r}; use fewer workers or launcher.link=null"
        )
    if os.geteuid() != 0:
        raise ConfigError(
            "launcher.link needs root (it creates network namespaces, veth links and tc "
            "qdiscs); run as root or use launcher.link=null (plain loopback)"
        )
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise ConfigError(
            f"launcher.link needs iproute2's {' and '.join(missing)} on PATH "
            "(apt-get install iproute2); or use launcher.link=null"
        )


@dataclass(frozen=True)
class Cluster:
    """A built emulated cluster: where the master listens, and each rank's namespace."""

    master_addr: str
    namespaces: tuple[str, ...]
    interfaces: tuple[str, ...]  # the rank-side interface in each namespace
    addresses: tuple[str, ...]  # each rank's address
    bridge: str
    rate_bits: int


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def _tag(pid: int, seq: int) -> str:
    """``cb<pid, base 36>-<seq, 2 base-36 digits>``: at most 10 characters for a pid below
    36^5, so ``<tag>h249`` fits the kernel's 15-character interface names."""
    return f"{PREFIX}{_b36(pid)}-{_b36(seq % 36**2).rjust(2, '0')}"


#: A cluster's names: ``<tag>b`` bridge, ``<tag>h<r>`` / ``<tag>w<r>`` veth ends (root /
#: rank side), ``<tag>-r<r>`` namespaces.
_NAME = re.compile(rf"^({PREFIX}([0-9a-z]+)-[0-9a-z]{{2}})(?:b|[hw]\d+|-r\d+)$")


def _owner(name: str) -> int | None:
    m = _NAME.match(name)
    return int(m.group(2), 36) if m else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run(*cmd: str, stdin: str | None = None, check: bool = True) -> str:
    res = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if check and res.returncode != 0:
        where = f" (batch:\n{stdin.strip()})" if stdin and len(stdin) < 2000 else ""
        raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr.strip()}{where}")
    return res.stdout


def _links() -> list[str]:
    out = _run("ip", "-o", "link", "show", check=False)
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def _namespaces() -> list[str]:
    out = _run("ip", "netns", "list", check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _subnet(seed: int) -> ipaddress.IPv4Network:
    """A /24 in 10.0.0.0/8 that no route or address of the root namespace overlaps."""
    out = _run("ip", "-4", "-o", "addr", "show", check=False)
    out += _run("ip", "-4", "route", "show", "table", "all", check=False)
    used = []
    for token in re.findall(r"\d+\.\d+\.\d+\.\d+(?:/\d+)?", out):
        with contextlib.suppress(ValueError):
            used.append(ipaddress.ip_network(token, strict=False))
    for i in range(32768):
        k = (seed * 7919 + i) % 32768
        net = ipaddress.IPv4Network(f"10.{128 + k // 256}.{k % 256}.0/24")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise RuntimeError("no free /24 subnet in 10.128.0.0/9 for an emulated cluster")


def remove(tag: str) -> None:
    """Delete every interface and namespace of cluster ``tag`` (missing ones are fine)."""
    for name in _links():  # deleting a veth end deletes its peer in the rank namespace
        if name.startswith(tag) and name[len(tag) :][:1] in ("h", "b"):
            _run("ip", "link", "del", name, check=False)
    for ns in _namespaces():
        if ns.startswith(f"{tag}-r"):
            _run("ip", "netns", "del", ns, check=False)


def clean_stale() -> list[str]:
    """Remove clusters whose owning process is gone (e.g. killed with kill -9)."""
    tags = set()
    for name in _links() + _namespaces():
        pid = _owner(name)
        if pid is not None and not _alive(pid):
            m = _NAME.match(name)
            assert m is not None
            tags.add(m.group(1))
    for tag in sorted(tags):
        remove(tag)
    return sorted(tags)


def _build(tag: str, workers: int, rate_bits: int | None, seed: int) -> Cluster:
    net = _subnet(seed)
    hosts = list(net.hosts())
    master, bridge = str(hosts[0]), f"{tag}b"
    spaces = tuple(f"{tag}-r{r}" for r in range(workers))
    inside = tuple(f"{tag}w{r}" for r in range(workers))
    outside = tuple(f"{tag}h{r}" for r in range(workers))
    addrs = tuple(str(hosts[1 + r]) for r in range(workers))
    for ns in spaces:
        _run("ip", "netns", "add", ns)
    root = [
        f"link add {bridge} type bridge",
        f"addr add {master}/{net.prefixlen} dev {bridge}",
        f"link set {bridge} up",
    ]
    for ns, w, h in zip(spaces, inside, outside, strict=True):
        root += [
            f"link add {h} type veth peer name {w} netns {ns}",
            f"link set {h} master {bridge}",
            f"link set {h} up",
        ]
    _run("ip", "-batch", "-", stdin="\n".join(root) + "\n")
    for ns, w, a in zip(spaces, inside, addrs, strict=True):
        lines = [f"addr add {a}/{net.prefixlen} dev {w}", f"link set {w} up", "link set lo up"]
        _run("ip", "-n", ns, "-batch", "-", stdin="\n".join(lines) + "\n")
    if rate_bits is not None:  # tbf on both ends: each direction of each link
        rate, burst = f"{rate_bits}bit", str(burst_bytes(rate_bits))
        shape = ["root", "tbf", "rate", rate, "burst", burst, "latency", "100ms"]
        for ns, w, h in zip(spaces, inside, outside, strict=True):
            _run("tc", "qdisc", "replace", "dev", h, *shape)
            _run("tc", "-n", ns, "qdisc", "replace", "dev", w, *shape)
    return Cluster(master, spaces, inside, addrs, bridge, rate_bits or 0)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while building or tearing down, so a Ctrl-C cannot leave half."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (e.g. from a scheduler or ``kill``) unwinds like Ctrl-C so teardown runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:  # someone else handles it: leave theirs alone
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def cluster(workers: int, link: str) -> Iterator[Cluster]:
    """Build an emulated cluster of ``workers`` ranks on links of rate ``link``; always
    remove everything it made on the way out (exception, Ctrl-C, SIGTERM included)."""
    global _seq
    check(link, workers)
    rate = parse_rate(link)
    with _seq_lock:
        _seq += 1
        seq = _seq
    tag = _tag(os.getpid(), seq)
    try:
        with _signals_deferred(), LOCK.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # subnet choice and creation, one at a time
            clean_stale()
            remove(tag)  # a reused pid's leftovers under this very name
            try:
                net = _build(tag, workers, rate, os.getpid() * 64 + seq)
            except BaseException:
                remove(tag)
                raise
        with _sigterm_as_exit():
            yield net
    finally:
        with _signals_deferred():
            remove(tag)


@contextlib.contextmanager
def endpoints(workers: int, link: str | None) -> Iterator[tuple[str, list[str | None]]]:
    """Where the ranks meet, and each rank's namespace: loopback and none without a
    link; otherwise an emulated cluster, built here and removed on the way out."""
    if link is None:
        yield "127.0.0.1", [None] * workers
        return
    with cluster(workers, link) as net:
        yield net.master_addr, list(net.namespaces)


def enter(namespace: str | None) -> None:
    """Move this process (its calling thread; call it before any thread that opens
    sockets exists) into ``namespace`` and point gloo at the rank's interface there.

    The rank also asks to be killed when its launcher dies: a launcher killed with
    kill -9 cannot tear its cluster down, the next cluster removes the links as stale,
    and a rank left behind would then wait on a dead link for the whole collective timeout.
    """
    if namespace is None:  # plain loopback
        return
    libc = ctypes.CDLL(None, use_errno=True)
    die_with_parent()
    path = NETNS_DIR / namespace
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if hasattr(os, "setns"):  # Python >= 3.12
            os.setns(fd, CLONE_NEWNET)
        elif libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)
    # Names inside a namespace are its own: the rank-side veth is the only non-lo link.
    interfaces = [name for _, name in socket.if_nameindex() if name != "lo"]
    if len(interfaces) != 1:
        raise RuntimeError(f"namespace {namespace} has links {interfaces}, expected one veth")
    os.environ["GLOO_SOCKET_IFNAME"] = interfaces[0]


#: A named, lasting cluster (``up``/``down``): its names are outside the pid-owned
#: pattern, so no ``clean_stale`` of a later run removes it.
_NAMED = re.compile(r"^[a-z][a-z0-9]{1,7}$")


def up(name: str, hosts: int, link: str | None = None) -> Cluster:
    """Build a lasting cluster called ``name`` (namespaces ``<name>-r<k>``, bridge
    ``<name>b``) of ``hosts`` namespaces, optionally shaped to ``link``; ``down`` removes
    it. A multi-node SLURM on one machine runs one slurmd in each (``.ci/slurm-up``)."""
    if not _NAMED.match(name) or name.startswith(PREFIX):
        raise ConfigError(f"cluster name {name!r}: 2-8 lower-case letters or digits, not 'cb...'")
    rate = parse_rate(link) if link else None
    with _signals_deferred(), LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        remove(name)  # a previous one of that name
        try:
            return _build(name, hosts, rate, zlib.crc32(name.encode()))
        except BaseException:
            remove(name)
            raise


def down(name: str) -> None:
    """Remove the lasting cluster ``name`` (what ``up`` made)."""
    with _signals_deferred():
        remove(name)


def main(argv: list[str] | None = None) -> None:
    """``python -m suite.netem --clean``: remove clusters left by killed owners;
    ``--up NAME --hosts N [--link RATE]`` / ``--down NAME``: a lasting cluster."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--clean", action="store_true", help="remove stale clusters")
    parser.add_argument("--list", action="store_true", help="list commbench links/namespaces")
    parser.add_argument("--up", metavar="NAME", help="build a lasting cluster, print it (JSON)")
    parser.add_argument("--hosts", type=int, default=2, help="namespaces of --up")
    parser.add_argument("--link", default=None, help="shape --up's links to this rate")
    parser.add_argument("--down", metavar="NAME", help="remove the lasting cluster NAME")
    args = parser.parse_args(argv)
    if args.up:
        net = up(args.up, args.hosts, args.link)
        print(json.dumps(dataclasses.asdict(net)))
        return
    if args.down:
        down(args.down)
        return
    if args.clean:
        removed = clean_stale()
        print(f"removed {len(removed)} stale cluster(s) {' '.join(removed)}".rstrip())
    if args.list or not args.clean:
        for name in _namespaces() + _links():
            pid = _owner(name)
            if pid is not None:
                print(f"{name}\towner pid {pid} ({'alive' if _alive(pid) else 'gone'})")


if __name__ == "__main__":
    main()
