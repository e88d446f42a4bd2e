#!/usr/bin/env python3
"""Opens N idle TCP connections to HOST:PORT and holds them until stdin closes.

Used by bench/run.sh to measure the gateway's memory with 10,000 idle connections:
prints "connected N" once they are all open (TLS handshakes included with --tls),
then waits. Standard library only; raise `ulimit -n` first.
"""

import argparse
import asyncio
import ssl
import sys


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("-n", type=int, default=10000)
    parser.add_argument("--tls", action="store_true")
    args = parser.parse_args()
    context = None
    if args.tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    writers = []
    for start in range(0, args.n, 500):
        batch = [asyncio.open_connection(args.host, args.port, ssl=context) for _ in range(start, min(args.n, start + 500))]
        for reader_writer in await asyncio.gather(*batch):
            writers.append(reader_writer[1])
    print(f"connected {len(writers)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for writer in writers:
        writer.close()


asyncio.run(main())
