#!/usr/bin/env python3
"""A slow, lossy link from netfilter's NFQUEUE, for kernels without `tc netem` (sch_netem).

    slow_net.py QUEUE DELAY_MS LOSS

Binds netfilter queue QUEUE and gives every packet queued there (iptables -j NFQUEUE) its
verdict DELAY_MS later: accepted, or dropped with probability LOSS. Packets keep their order
(one fixed delay). Run it in the network namespace whose rules queue the packets; it serves
until killed. Speaks nfnetlink_queue directly (linux/netfilter/nfnetlink_queue.h), so it needs
nothing beyond Python's standard library.
"""
import heapq
import random
import select
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NF_DROP, NF_ACCEPT = 0, 1
NLM_F_REQUEST = 1
NLMSG_ERROR = 2


def attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n % 4)


def message(msg: int, queue: int, attrs: bytes) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    kind = (NFNL_SUBSYS_QUEUE << 8) | msg
    return struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST, 0, 0) + body


def packet_ids(data: bytes):
    """The packet id of every NFQNL_MSG_PACKET in one netlink read."""
    off = 0
    while off + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, off)
        if length < 16:
            break
        if kind == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", data, off + 16)
            if err != 0:
                sys.exit(f"slow_net: netlink error {err}")
        elif kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            a = off + 16 + 4  # after nlmsghdr and nfgenmsg
            while a + 4 <= off + length:
                alen, akind = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if akind & 0x7FFF == NFQA_PACKET_HDR:
                    yield struct.unpack_from("!I", data, a + 4)[0]
                a += (alen + 3) & ~3
        off += (length + 3) & ~3


def main() -> None:
    queue, delay, loss = int(sys.argv[1]), float(sys.argv[2]) / 1000, float(sys.argv[3])
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((0, 0))
    s.send(message(NFQNL_MSG_CONFIG, queue, attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, socket.AF_INET))))
    s.send(message(NFQNL_MSG_CONFIG, queue, attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))))
    s.send(message(NFQNL_MSG_CONFIG, queue, attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", 65536))))
    print(f"slow_net: queue {queue}, delay {delay * 1000:.0f} ms, loss {loss:.2%}", flush=True)
    due = []  # (time, seq, id): seq keeps arrival order among equal times
    seq = 0
    while True:
        wait = max(0.0, due[0][0] - time.monotonic()) if due else None
        if select.select([s], [], [], wait)[0]:
            try:
                data = s.recv(1 << 20)
            except OSError:  # ENOBUFS: the kernel dropped packets it could not queue to us
                continue
            now = time.monotonic()
            for pid in packet_ids(data):
                heapq.heappush(due, (now + delay, seq, pid))
                seq += 1
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, _, pid = heapq.heappop(due)
            verdict = NF_DROP if random.random() < loss else NF_ACCEPT
            s.send(message(NFQNL_MSG_VERDICT, queue, attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, pid))))


if __name__ == "__main__":
    main()
