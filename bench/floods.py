#!/usr/bin/env python3
"""Abuse traffic for bench/run.sh's flood rows: requests that fail verification.

  floods.py HOST PORT clients --first N --count M [--rate R]
      M unsigned requests, each from its own client IP (X-Forwarded-For 10.x.y.z,
      numbered from N; the gateway must trust the sender as a proxy), so every one is a
      new client failing verification: the penalty box's worst case. --rate paces them
      (requests per second); without it they go as fast as the gateway answers.
  floods.py HOST PORT v1a --count M [--entries 170]
      M requests whose webhook-signature holds 170 well-formed v1a entries nobody signed.

HTTP/1.1 keep-alive, pipelined in batches over a few connections. Prints one line:
requests sent and answered, and the seconds it took. A benchmark tool, not a test.
"""
import argparse
import asyncio
import base64
import time

PATH = "/webhooks/openai"


def client_request(n):
    ip = f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
    return (
        f"POST {PATH} HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
        f"x-forwarded-for: {ip}\r\ncontent-length: 2\r\n\r\n{{}}"
    ).encode()


def v1a_request(n, entries):
    signature = " ".join(
        "v1a," + base64.b64encode(bytes([i % 256]) * 64).decode() for i in range(entries)
    )
    body = '{"type":"response.completed"}'
    return (
        f"POST {PATH} HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
        f"webhook-id: msg_flood_{n}\r\nwebhook-timestamp: {int(time.time())}\r\n"
        f"webhook-signature: {signature}\r\ncontent-length: {len(body)}\r\n\r\n{body}"
    ).encode()


async def connection(host, port, requests, batch, pace):
    reader, writer = await asyncio.open_connection(host, port)
    answered = 0
    for start in range(0, len(requests), batch):
        chunk = requests[start:start + batch]
        await pace(len(chunk))
        writer.write(b"".join(chunk))
        await writer.drain()
        want, tail = answered + len(chunk), b""
        while answered < want:
            data = await reader.read(1 << 16)
            if not data:
                raise SystemExit("the gateway closed a connection")
            # Answers are small JSON bodies: a status line never appears inside one.
            answered += (tail + data).count(b"HTTP/1.1 ")
            tail = data[-8:]
    writer.close()
    return answered


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("kind", choices=["clients", "v1a"])
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--rate", type=float, default=0)
    parser.add_argument("--entries", type=int, default=170)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    if args.kind == "clients":
        requests = [client_request(args.first + i) for i in range(args.count)]
    else:
        one = v1a_request(0, args.entries)
        requests = [one] * args.count  # verification fails before the id matters
    batch = 50 if args.rate == 0 else max(1, int(args.rate / 100 / args.connections))
    started = time.monotonic()
    sent = [0]

    async def pace(n):
        if args.rate:
            sent[0] += n
            ahead = sent[0] / args.rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)

    shares = [requests[i::args.connections] for i in range(args.connections)]
    answered = await asyncio.gather(
        *(connection(args.host, args.port, share, batch, pace) for share in shares)
    )
    print(f"{len(requests)} sent, {sum(answered)} answered, {time.monotonic() - started:.2f} s", flush=True)


asyncio.run(main())
