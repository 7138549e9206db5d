"""No network during conversion: firmware build hosts are offline, and a tool that silently downloads
(onnx2tf fetches a sample image file for image inputs) breaks reproducibility. Inside ``offline()``
any attempt to connect to a non-loopback address raises at once instead of hanging."""
from __future__ import annotations

import contextlib
import ipaddress
import socket

__all__ = ["NetworkBlocked", "offline"]


class NetworkBlocked(OSError):
    pass


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0] if isinstance(address, tuple) and address else address
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in ("localhost",)


@contextlib.contextmanager
def offline():
    """Refuse outgoing connections to anything but loopback for the duration (this process only)."""
    orig_connect, orig_connect_ex = socket.socket.connect, socket.socket.connect_ex
    orig_gai = socket.getaddrinfo

    def connect(self, address):
        if not _is_local(address):
            raise NetworkBlocked(f"edgeopt: network access to {address!r} blocked during conversion")
        return orig_connect(self, address)

    def connect_ex(self, address):
        if not _is_local(address):
            raise NetworkBlocked(f"edgeopt: network access to {address!r} blocked during conversion")
        return orig_connect_ex(self, address)

    def getaddrinfo(host, *a, **kw):
        if host not in (None, "localhost") and not _is_local((host,)):
            raise NetworkBlocked(f"edgeopt: name lookup of {host!r} blocked during conversion")
        return orig_gai(host, *a, **kw)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = orig_connect, orig_connect_ex, orig_gai
