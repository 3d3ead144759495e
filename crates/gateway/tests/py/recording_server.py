"""A stdio MCP server (2025-11-25 framing) with one tool, `echo`, that appends every `tools/call`
line it receives, byte for byte, to the file named by its first argument, and every other line
to that name plus `.other`: for tests that must see exactly what the gateway wrote upstream
(duplicate keys included, which a parsed value hides)."""

import json
import sys

RECORD = sys.argv[1]

for line in sys.stdin:
    msg = json.loads(line)
    method, params, msg_id = msg.get("method"), msg.get("params") or {}, msg.get("id")
    if method != "tools/call":
        with open(RECORD + ".other", "a", encoding="utf-8") as f:
            f.write(line if line.endswith("\n") else line + "\n")
    if msg_id is None:
        continue
    if method == "initialize":
        result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}, "resources": {}},
                  "serverInfo": {"name": "recording-server", "version": "0"}}
    elif method == "tools/list":
        result = {"tools": [{"name": "echo", "description": "Echoes `m`.",
                             "inputSchema": {"type": "object", "properties": {"m": {"type": "string"}}}}]}
    elif method == "tools/call":
        with open(RECORD, "a", encoding="utf-8") as f:
            f.write(line if line.endswith("\n") else line + "\n")
        result = {"content": [{"type": "text", "text": str((params.get("arguments") or {}).get("m"))}]}
    elif method == "resources/read":
        result = {"contents": [{"uri": params.get("uri"), "text": "x"}]}
    elif method == "ping":
        result = {}
    else:
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg_id,
                                     "error": {"code": -32601, "message": "method not found"}}) + "\n")
        sys.stdout.flush()
        continue
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg_id, "result": result}) + "\n")
    sys.stdout.flush()
