#!/usr/bin/env python3
"""One MongoDB command over the wire protocol (OP_MSG), for scripts/stack: no driver needed.

  wire.py HOST PORT [--ca FILE] ping
  wire.py HOST PORT [--ca FILE] create-user NAME PASSWORD ROLE DB

`--ca` speaks TLS and verifies the server against FILE. create-user relies on the server's
localhost exception (while no user exists, a loopback client may create the first one), as
mongod does. Exit 0 when the reply has ok: 1.
"""
import socket
import ssl
import struct
import sys


def element(k, v):
    key = k.encode() + b"\x00"
    if isinstance(v, bool):
        return b"\x08" + key + (b"\x01" if v else b"\x00")
    if isinstance(v, int):
        return b"\x10" + key + struct.pack("<i", v)
    if isinstance(v, str):
        s = v.encode() + b"\x00"
        return b"\x02" + key + struct.pack("<i", len(s)) + s
    if isinstance(v, list):
        return b"\x04" + key + document([(str(i), x) for i, x in enumerate(v)])
    return b"\x03" + key + document(list(v.items()))


def document(items):
    body = b"".join(element(k, v) for k, v in items)
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


def command(host, port, ca, items):
    msg = struct.pack("<I", 0) + b"\x00" + document(items)
    s = socket.create_connection((host, port), timeout=2)
    if ca:
        ctx = ssl.create_default_context(cafile=ca)
        s = ctx.wrap_socket(s, server_hostname=host)
    s.settimeout(2)
    s.sendall(struct.pack("<iiii", 16 + len(msg), 1, 0, 2013) + msg)
    data = b""
    while len(data) < 4 or len(data) < struct.unpack("<i", data[:4])[0]:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def main(argv):
    host, port, rest = argv[1], int(argv[2]), argv[3:]
    ca = None
    if rest[:1] == ["--ca"]:
        ca, rest = rest[1], rest[2:]
    if rest == ["ping"]:
        items = [("ping", 1), ("$db", "admin")]
    elif rest[:1] == ["create-user"] and len(rest) == 5:
        name, pwd, role, db = rest[1:]
        items = [("createUser", name), ("pwd", pwd), ("roles", [{"role": role, "db": db}]), ("$db", "admin")]
    else:
        sys.exit(__doc__)
    try:
        data = command(host, port, ca, items)
    except (OSError, ssl.SSLError):
        return 1
    ok = b"\x01ok\x00" + struct.pack("<d", 1.0)
    if ok in data:
        return 0
    if rest[0] != "ping":
        sys.stderr.write(f"mongo {rest[0]}: {data[21:].decode(errors='replace')}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
