"""A local stand-in for the Hugging Face Hub: its model-info API and `resolve` downloads with HTTP ranges.

Serves each folder `root/<org>--<name>` as the repository `org/name`, counts the bytes it sends per file
and records every Range header, so tests can tell a header read from a download and a resume from a restart.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import threading
from pathlib import Path

SHA = "0123456789abcdef0123456789abcdef01234567"


class _HubHandler(http.server.BaseHTTPRequestHandler):
    root: Path
    sent: dict[str, int]
    ranges: list[str]
    fail_after: int | None = None  # stop a weights transfer after this many bytes (a dropped connection)

    def log_message(self, *args):  # quiet test output
        pass

    def do_GET(self):
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "revision":
            return self._listing(f"{parts[2]}/{parts[3]}")
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._file(f"{parts[0]}/{parts[1]}", "/".join(parts[4:]))
        self.send_error(404)

    def _repo_dir(self, repo: str) -> Path | None:
        d = self.root / repo.replace("/", "--")
        return d if d.is_dir() else None

    def _listing(self, repo: str):
        d = self._repo_dir(repo)
        if d is None:
            return self.send_error(404)
        siblings = []
        for f in sorted(d.iterdir()):
            entry = {"rfilename": f.name, "size": f.stat().st_size}
            if f.suffix == ".safetensors":
                entry["lfs"] = {
                    "size": f.stat().st_size,
                    "sha256": hashlib.sha256(f.read_bytes()).hexdigest(),
                }
            siblings.append(entry)
        self._send(200, json.dumps({"id": repo, "sha": SHA, "siblings": siblings}).encode())

    def _file(self, repo: str, name: str):
        d = self._repo_dir(repo)
        if d is None or not (d / name).is_file():
            return self.send_error(404)
        data = (d / name).read_bytes()
        rng = self.headers.get("Range")
        if rng:
            self.ranges.append(rng)
            start, _, end = rng.removeprefix("bytes=").partition("-")
            end_i = int(end) if end else len(data) - 1
            body = data[int(start) : end_i + 1]
            status = 206
        else:
            body, status = data, 200
        if self.fail_after is not None and name.endswith(".safetensors") and len(body) > 4096:
            body = body[: self.fail_after]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body) + 1000))  # promise more than is sent
            self.end_headers()
            self.wfile.write(body)
            self.sent[name] = self.sent.get(name, 0) + len(body)
            self.close_connection = True
            return
        self.sent[name] = self.sent.get(name, 0) + len(body)
        self._send(status, body)

    def _send(self, status: int, body: bytes):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def start_hub(root: Path) -> tuple[http.server.ThreadingHTTPServer, type[_HubHandler]]:
    """A running server for the repositories under root; the handler class holds its counters."""
    handler = type("Handler", (_HubHandler,), {"root": root, "sent": {}, "ranges": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler


def publish(root: Path, repo_id: str, folder: Path) -> None:
    """Make a local model folder available as `repo_id` on the server rooted at root."""
    shutil.copytree(folder, root / repo_id.replace("/", "--"))
