"""Drive a Jupyter kernel in an attendee's server over the real protocol.

REST to start the kernel, then the kernel's websocket channels to execute
code, as JupyterLab does. Used by tests and benchmarks.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

import requests
import websocket


class KernelDied(RuntimeError):
    """The kernel process went away while running code (e.g. OOM-killed)."""


@dataclass
class ExecResult:
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    result: str | None = None
    elapsed: float = 0.0
    statuses: list[str] = field(default_factory=list)


class Kernel:
    """One kernel in a user's server, addressed through the hub's proxy."""

    def __init__(self, server_url: str, token: str, kernel_id: str | None = None):
        self.server_url = server_url.rstrip("/")
        self.token = token
        self.headers = {"Authorization": f"token {token}"}
        if kernel_id is None:
            r = requests.post(f"{self.server_url}/api/kernels", headers=self.headers,
                              json={"name": "python3"}, timeout=60)
            r.raise_for_status()
            kernel_id = r.json()["id"]
        self.id = kernel_id
        self.session = uuid.uuid4().hex
        ws_url = self.server_url.replace("http://", "ws://") + f"/api/kernels/{self.id}/channels"
        self.ws = websocket.create_connection(ws_url, header=[f"Authorization: token {token}"], timeout=30)

    def _msg(self, msg_type: str, content: dict) -> dict:
        return {
            "header": {"msg_id": uuid.uuid4().hex, "username": "test", "session": self.session,
                       "msg_type": msg_type, "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "content": content, "channel": "shell", "buffers": [],
        }

    def execute(self, code: str, timeout: float = 120) -> ExecResult:
        """Run code and collect its output until the kernel is idle again."""
        msg = self._msg("execute_request", {"code": code, "silent": False, "store_history": False,
                                            "user_expressions": {}, "allow_stdin": False})
        msg_id = msg["header"]["msg_id"]
        out = ExecResult()
        start = time.monotonic()
        self.ws.send(json.dumps(msg))
        deadline = start + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"kernel did not finish within {timeout}s; output so far: {out}")
            self.ws.settimeout(min(remaining, 30))
            try:
                raw = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketConnectionClosedException, ConnectionError) as e:
                raise KernelDied(f"kernel connection closed: {e}") from None
            if not raw:
                raise KernelDied("kernel connection closed")
            reply = json.loads(raw)
            mtype = reply.get("msg_type") or reply["header"]["msg_type"]
            content = reply.get("content", {})
            if mtype == "status" and content.get("execution_state") in ("restarting", "dead"):
                raise KernelDied(f"kernel is {content['execution_state']}")
            if reply.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if mtype == "stream":
                if content["name"] == "stdout":
                    out.stdout += content["text"]
                else:
                    out.stderr += content["text"]
            elif mtype == "execute_result":
                out.result = content["data"].get("text/plain")
            elif mtype == "error":
                out.error = f"{content['ename']}: {content['evalue']}"
            elif mtype == "status":
                out.statuses.append(content["execution_state"])
                if content["execution_state"] == "idle":
                    out.elapsed = time.monotonic() - start
                    return out

    def run(self, code: str, timeout: float = 120) -> str:
        """Run code, fail loudly on an exception, return stdout."""
        res = self.execute(code, timeout)
        if res.error:
            raise AssertionError(f"kernel raised {res.error}\nstdout: {res.stdout}\nstderr: {res.stderr}")
        return res.stdout

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            requests.delete(f"{self.server_url}/api/kernels/{self.id}", headers=self.headers, timeout=30)
