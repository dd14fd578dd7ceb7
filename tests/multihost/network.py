"""Hosts on this machine: one network namespace per host, each with its own address on a
private bridge that the test creates and removes (``ip netns``, veth pairs; needs root).

The root namespace is the database host: PostgreSQL listens on 127.0.0.1 only, so a small TCP
forwarder in this process publishes it on the bridge address, and every other host reaches it
over the bridge like a remote server. No address outside 127.0.0.1 and the bridge's own
private /24 is ever used.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import socket
import subprocess
import threading
from collections.abc import Sequence

import attrs


class NoNamespaces(Exception):
    """Namespaces cannot be made here (not root, no ``ip``, a sandbox forbids it)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


def _free_subnet() -> ipaddress.IPv4Network:
    used = _ip("-4", "addr").stdout
    taken = [ipaddress.ip_interface(w).network for line in used.splitlines()
             if (w := line.split()[1] if line.strip().startswith("inet ") else "")]
    for _ in range(50):
        net = ipaddress.ip_network(f"10.{secrets.randbelow(200) + 20}.{secrets.randbelow(250)}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise NoNamespaces("no free private /24 for the test bridge")


@attrs.define
class Network:
    hosts: Sequence[str]
    tag: str = attrs.Factory(lambda: secrets.token_hex(3))
    subnet: ipaddress.IPv4Network | None = None
    addresses: dict[str, str] = attrs.Factory(dict)
    made: list[str] = attrs.Factory(list)

    @property
    def bridge(self) -> str:
        return f"rfb{self.tag}"

    def ns(self, host: str) -> str:
        return f"rf{self.tag}{host}"

    @property
    def gateway(self) -> str:
        assert self.subnet is not None
        return str(self.subnet.network_address + 1)

    def up(self) -> Network:
        if os.geteuid() != 0 or not shutil.which("ip"):
            raise NoNamespaces("network namespaces need root and iproute2 (`ip`)")
        probe = _ip("netns", "add", f"rf{self.tag}probe", check=False)
        if probe.returncode != 0:
            raise NoNamespaces(f"`ip netns add` failed: {probe.stderr.strip()[:200]}")
        _ip("netns", "del", f"rf{self.tag}probe", check=False)
        self.subnet = _free_subnet()
        try:
            self._make()
        except subprocess.CalledProcessError as exc:
            self.down()
            raise NoNamespaces(f"cannot build the test network: {exc.stderr.strip()[:200]}") from None
        return self

    def _make(self) -> None:
        assert self.subnet is not None
        _ip("link", "add", self.bridge, "type", "bridge")
        self.made.append("bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, host in enumerate(self.hosts):
            ns, outer, inner = self.ns(host), f"rv{self.tag}{i}", f"ri{self.tag}{i}"
            address = str(self.subnet.network_address + 2 + i)
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "master", self.bridge)
            _ip("link", "set", outer, "up")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            self.addresses[host] = address

    def down(self) -> None:
        for name in reversed(self.made):
            if name == "bridge":
                _ip("link", "del", self.bridge, check=False)
            else:
                _ip("netns", "del", name, check=False)  # takes its veth pair with it
        self.made.clear()

    def run(self, host: str, argv: Sequence[str], **kw: object) -> subprocess.Popen[str]:
        """Start ``argv`` on ``host``: ``ip netns exec`` execs it, so the pid is the program's."""
        return subprocess.Popen(["ip", "netns", "exec", self.ns(host), *argv], text=True,
                                **kw)  # type: ignore[call-overload]


class Forwarder:
    """Publishes 127.0.0.1:``port`` on ``address``:``port`` (the database host's network side)."""

    def __init__(self, address: str, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.server = socket.create_server((address, port), backlog=128)
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.stopped.set()
        self.server.close()
