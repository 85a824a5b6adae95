"""Ready check for scripts/stack: sends one Kafka Metadata request (v4, no auto-creation) and exits
0 only when the broker answers with itself in the broker list, and, when topics are named, lists
each of them with no error and at least one partition.
A port that accepts connections is not enough: the broker opens it before its metadata is loaded.
And a topic that CreateTopics has just acknowledged is not yet known to the broker for a moment
(the `createTopics` javadoc of Kafka's `Admin`), so a client started right after could refuse it.

    python3 metadata_ping.py HOST PORT [TOPIC...]
"""
import socket
import struct
import sys

API_METADATA, VERSION, CORRELATION = 3, 4, 7


def string(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def request(topics: list[str]) -> bytes:
    header = struct.pack(">hhi", API_METADATA, VERSION, CORRELATION) + string("leafsync-stack")
    if topics:
        body = struct.pack(">i", len(topics)) + b"".join(string(t) for t in topics)
    else:
        body = struct.pack(">i", -1)  # null: every topic
    msg = header + body + struct.pack(">?", False)  # allow_auto_topic_creation = false
    return struct.pack(">i", len(msg)) + msg


def read_exact(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    return data


class Reader:
    """Reads the fields of a Metadata v4 response in order."""

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, fmt: str):
        values = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return values[0] if len(values) == 1 else values

    def string(self):
        n = self.take(">h")
        if n < 0:
            return None
        s = self.data[self.at:self.at + n].decode()
        self.at += n
        return s


def answer(r: Reader) -> tuple:
    """After the correlation id: how many brokers, and name → (error code, partition count) of
    every topic answered."""
    r.take(">i")  # throttle_time_ms
    brokers = r.take(">i")
    for _ in range(brokers):  # node_id, host, port, rack
        r.take(">i"), r.string(), r.take(">i"), r.string()
    r.string()  # cluster_id
    r.take(">i")  # controller_id
    topics = {}
    for _ in range(r.take(">i")):
        error, name, _internal = r.take(">h"), r.string(), r.take(">?")
        partitions = r.take(">i")
        for _ in range(partitions):  # error, index, leader, replicas, isr
            r.take(">hii")
            for _ in range(2):
                r.take(f">{r.take('>i')}i")
        topics[name] = (error, partitions)
    return brokers, topics


def main() -> int:
    host, port, topics = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.settimeout(2)
            s.sendall(request(topics))
            (size,) = struct.unpack(">i", read_exact(s, 4))
            resp = read_exact(s, size)
    except OSError:
        return 1
    r = Reader(resp)
    if r.take(">i") != CORRELATION:
        return 1
    brokers, listed = answer(r)
    ready = brokers >= 1 and all(listed.get(t, (1, 0))[0] == 0 and listed[t][1] > 0 for t in topics)
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
