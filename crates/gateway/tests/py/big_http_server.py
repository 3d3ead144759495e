"""A legacy Streamable HTTP MCP server (plain JSON answers, no SSE) with one tool, `big`, whose
answer is a text of `mib` MiB; `chunked` leaves out the Content-Length, so only reading the
body can tell its size. Arguments: PORT (appended by the test helper)."""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(405)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_POST(self):
        msg = json.loads(self.rfile.read(int(self.headers["content-length"])))
        method, msg_id = msg.get("method"), msg.get("id")
        if msg_id is None:
            self.send_response(202)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        chunked = False
        if method == "initialize":
            result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                      "serverInfo": {"name": "big", "version": "0"}}
        elif method == "tools/list":
            result = {"tools": [{"name": "big", "inputSchema": {"type": "object", "properties": {
                "mib": {"type": "integer"}, "chunked": {"type": "boolean"}}}}]}
        elif method == "tools/call":
            args = msg["params"].get("arguments") or {}
            chunked = bool(args.get("chunked"))
            result = {"content": [{"type": "text", "text": "a" * (int(args.get("mib", 0)) << 20)}]}
        else:
            result = {}
        body = json.dumps({"jsonrpc": "2.0", "id": msg_id, "result": result}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if chunked:
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 1 << 20):
                part = body[i:i + (1 << 20)]
                try:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                except (BrokenPipeError, ConnectionResetError):
                    return
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                return


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
