"""WebSocket peers from another stack (Python websockets) for the tests.

    ws.py server NAME [HOST] # echo server on HOST (default 127.0.0.1); prints
                             # its port, answers "NAME:<msg>"
    ws.py client URL KEY N [IP:PORT]
                             # sends N messages with baggage okteto-divert=KEY
                             # (cookie=NS: with the cookie divert=NS instead;
                             # -: neither), prints the replies as JSON; with
                             # IP:PORT, connects there (an ingress controller)
                             # and asks for URL's host
"""

import asyncio
import json
import sys

import websockets


async def server(name, host):
    async def echo(ws):
        async for msg in ws:
            await ws.send(f"{name}:{msg}")

    async with websockets.serve(echo, host, 0) as srv:
        port = srv.sockets[0].getsockname()[1]
        print(port, flush=True)
        # Serve until the test closes our stdin.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def client(url, key, n, addr=None):
    if key == "-":
        headers = {}
    elif key.startswith("cookie="):
        headers = {"cookie": f"divert={key[len('cookie='):]}"}
    else:
        headers = {"baggage": f"okteto-divert={key}"}
    where = {}
    if addr:
        host, port = addr.rsplit(":", 1)
        where = {"host": host, "port": int(port)}
    async with websockets.connect(url, additional_headers=headers, open_timeout=10, **where) as ws:
        replies = []
        for i in range(n):
            await ws.send(f"m{i}")
            replies.append(await asyncio.wait_for(ws.recv(), 10))
    print(json.dumps(replies))


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(server(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"))
    else:
        asyncio.run(client(sys.argv[2], sys.argv[3], int(sys.argv[4]), *sys.argv[5:6]))
