"""Test-only safety net: this process may open sockets to loopback addresses and nothing else.

Loaded by the test session (conftest) and, through PYTHONPATH, by every worker process the
tests start, so no bug in a test or in the worker can send traffic off this machine.
"""

import ipaddress
import socket

_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


class OffLoopbackConnection(ConnectionRefusedError):
    pass


def _check(sock: socket.socket, address) -> None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # unix sockets are local by nature
    host = address[0]
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        raise OffLoopbackConnection(f"test network guard: unresolved host {host!r}") from None
    mapped = getattr(ip, "ipv4_mapped", None)
    if not (ip.is_loopback or (mapped is not None and mapped.is_loopback)):
        raise OffLoopbackConnection(f"test network guard: refused connection to {host}")


def _guarded_connect(self, address):
    _check(self, address)
    return _connect(self, address)


def _guarded_connect_ex(self, address):
    _check(self, address)
    return _connect_ex(self, address)


if not getattr(socket.socket.connect, "loopback_only", False):
    _guarded_connect.loopback_only = True
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex
