"""An MCP server (2025-11-25 over stdio, standard library only: it starts in milliseconds) that
floods its client with notifications, for the gateway's backpressure tests.

Tools:
- `flood` {count, size}: writes `count` progress notifications of about `size` bytes (to the
  call's progress token) as fast as its stdout takes them, then its result, "flooded N". Stops
  early once the call is cancelled.
- `flood_later` {count, size}: answers at once; then, 0.2 s later, writes `count` progress
  notifications for the token "later" and a final `notifications/resources/updated` for
  `flood://done`, outside any request.
- `ask` {count}: sends `count` `roots/list` requests to the client, then its result.
- `huge` {mib}: writes one log notification of `mib` MiB, then its result.
- `echo` {text}: answers its text.

With FLOOD_STATE set to a directory, the server writes there `written` (how many flood
notifications it has written so far, updated every 100 and at the end), `done` once
`flood_later` sent its last notification, and `cancelled` (the id of
a cancelled request, the moment the cancellation is read: the reader is its own thread, so it
reads while a flood is blocked on a full stdout), and `refused` (how many of its requests to
the client were answered with an error).
Usage: python flood_server.py"""

import json
import os
import sys
import threading
import time

STATE = os.environ.get("FLOOD_STATE")
OUT = sys.stdout.buffer
OUT_LOCK = threading.Lock()
CANCELLED = set()

TOOLS = [
    {
        "name": "flood",
        "description": "Sends many progress notifications, then its result.",
        "inputSchema": {
            "type": "object",
            "properties": {"count": {"type": "integer"}, "size": {"type": "integer"}},
            "required": ["count", "size"],
        },
    },
    {
        "name": "flood_later",
        "description": "Answers, then sends many progress notifications outside any request.",
        "inputSchema": {
            "type": "object",
            "properties": {"count": {"type": "integer"}, "size": {"type": "integer"}},
            "required": ["count", "size"],
        },
    },
    {
        "name": "ask",
        "description": "Sends requests to the client.",
        "inputSchema": {
            "type": "object",
            "properties": {"count": {"type": "integer"}},
            "required": ["count"],
        },
    },
    {
        "name": "huge",
        "description": "Sends one huge log notification.",
        "inputSchema": {
            "type": "object",
            "properties": {"mib": {"type": "integer"}},
            "required": ["mib"],
        },
    },
    {
        "name": "echo",
        "description": "Echoes its text.",
        "inputSchema": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    },
]


def note(name, value):
    if STATE:
        tmp = os.path.join(STATE, name + ".tmp")
        with open(tmp, "w") as f:
            f.write(str(value))
        os.replace(tmp, os.path.join(STATE, name))


def send(obj):
    data = json.dumps(obj).encode() + b"\n"
    with OUT_LOCK:
        OUT.write(data)
        OUT.flush()


def result(rid, text):
    send({"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": text}]}})


def flood(rid, token, count, size):
    """Writes up to `count` progress notifications; returns how many it wrote."""
    pad = "x" * max(size - 120, 0)
    head = '{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":%s,' % json.dumps(token)
    written = 0
    for i in range(count):
        if rid in CANCELLED:
            break
        line = (head + '"progress":%d,"total":%d,"message":"%s"}}\n' % (i + 1, count, pad)).encode()
        with OUT_LOCK:
            OUT.write(line)
            OUT.flush()
        written += 1
        if written % 100 == 0:
            note("written", written)
    note("written", written)
    return written


def call(rid, params):
    name = params.get("name")
    args = params.get("arguments") or {}
    if name == "echo":
        result(rid, args.get("text", ""))
    elif name == "huge":
        chunk = b"x" * (1 << 20)
        with OUT_LOCK:
            OUT.write(b'{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"')
            for _ in range(int(args["mib"])):
                OUT.write(chunk)
            OUT.write(b'"}}\n')
            OUT.flush()
        result(rid, "huge")
    elif name == "ask":
        for i in range(int(args["count"])):
            send({"jsonrpc": "2.0", "id": "ask-%d" % i, "method": "roots/list"})
        result(rid, "asked")
    elif name == "flood":
        token = (params.get("_meta") or {}).get("progressToken", "flood")
        n = flood(rid, token, int(args["count"]), int(args["size"]))
        result(rid, "flooded %d" % n)
    elif name == "flood_later":
        result(rid, "later")
        time.sleep(0.2)
        flood(None, "later", int(args["count"]), int(args["size"]))
        send({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "flood://done"}})
        note("done", 1)
    else:
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32602, "message": "unknown tool"}})


def main():
    refused = 0
    for line in sys.stdin.buffer:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        method = msg.get("method")
        rid = msg.get("id")
        params = msg.get("params") or {}
        if method == "initialize":
            send({"jsonrpc": "2.0", "id": rid, "result": {
                "protocolVersion": "2025-11-25",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "flood-test-server", "version": "0.1.0"},
            }})
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": rid, "result": {"tools": TOOLS}})
        elif method == "tools/call":
            threading.Thread(target=call, args=(rid, params), daemon=True).start()
        elif method == "ping":
            send({"jsonrpc": "2.0", "id": rid, "result": {}})
        elif method == "notifications/cancelled":
            CANCELLED.add(params.get("requestId"))
            note("cancelled", json.dumps(params.get("requestId")))
        elif method is None and "error" in msg:
            refused += 1
            note("refused", refused)
        elif rid is not None and method is not None:
            send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "method not found"}})


if __name__ == "__main__":
    main()
