"""Ready check for scripts/stack: sends one Kafka Metadata request (v4: every topic, no
auto-creation) and exits 0 only when the broker answers with itself in the broker list.
A port that accepts connections is not enough: the broker opens it before its metadata is loaded.

    python3 metadata_ping.py HOST PORT
"""
import socket
import struct
import sys

API_METADATA, VERSION, CORRELATION = 3, 4, 7


def request() -> bytes:
    client = b"leafsync-stack"
    header = struct.pack(">hhih", API_METADATA, VERSION, CORRELATION, len(client)) + client
    body = struct.pack(">i?", -1, False)  # topics = null (all), allow_auto_topic_creation = false
    msg = header + body
    return struct.pack(">i", len(msg)) + msg


def read_exact(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    return data


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.settimeout(2)
            s.sendall(request())
            (size,) = struct.unpack(">i", read_exact(s, 4))
            resp = read_exact(s, size)
    except OSError:
        return 1
    # correlation_id, throttle_time_ms, then the brokers array (int32 count, first node_id).
    correlation, _throttle, brokers = struct.unpack(">iii", resp[:12])
    return 0 if correlation == CORRELATION and brokers >= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
