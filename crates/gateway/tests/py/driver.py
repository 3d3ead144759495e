"""A long-lived MCP client driven by JSON lines on stdin (one command a line, one answer a line).

Keeps `import mcp` (about 1.4 s) to once per test binary. Commands:
  {"op": "open", "url": URL | "command": [...], "mode": "auto" | "legacy" | "2026-07-28"}
  {"op": "list"}
  {"op": "call", "name": NAME, "args": {...}, "meta": {...}?}
  {"op": "close"}
"""
import asyncio
import json
import sys

import mcp
from mcp import Client, StdioServerParameters


def dump(obj):
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json", by_alias=True, exclude_none=True)
    return obj


async def main():
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    client = None
    stack = None
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        out = {}
        try:
            op = cmd["op"]
            if op == "open":
                if "url" in cmd:
                    target = cmd["url"]
                else:
                    target = StdioServerParameters(command=cmd["command"][0], args=cmd["command"][1:])
                client = Client(target, mode=cmd.get("mode", "auto"), raise_exceptions=True, cache=None)
                await client.__aenter__()
                out = {"ok": True, "protocol_version": getattr(client.session, "protocol_version", None)}
            elif op == "list":
                r = await client.list_tools()
                out = {"tools": [dump(t) for t in r.tools]}
            elif op == "call":
                r = await client.call_tool(cmd["name"], cmd.get("args", {}), meta=cmd.get("meta"))
                out = {"result": dump(r)}
            elif op == "close":
                await client.__aexit__(None, None, None)
                client = None
                out = {"ok": True}
        except Exception as e:  # noqa: BLE001 - every failure goes back to the test
            err = getattr(e, "error", None)
            out = {"exception": type(e).__name__, "message": str(e), "error": dump(err) if err is not None else None}
        sys.stdout.write(json.dumps(out, default=str) + "\n")
        sys.stdout.flush()


asyncio.run(main())
