"""Run the real ComfyUI headless on loopback and drive it through its HTTP API."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .host import COMFY_DIR, ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """``main.py --cpu --listen 127.0.0.1``; ``base_dir`` (optional) isolates models, outputs and custom nodes."""

    def __init__(self, base_dir: Path | None = None, output_dir: Path | None = None, port: int | None = None,
                 log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.base_dir = base_dir
        self.output_dir = output_dir
        self.log_path = log_path or Path(os.environ.get("TMPDIR", "/tmp")) / f"comfy_{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> ComfyServer:
        args = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                "--disable-auto-launch", "--database-url", "sqlite:///:memory:"]
        if self.base_dir is not None:
            args += ["--base-directory", str(self.base_dir)]
        if self.output_dir is not None:
            args += ["--output-directory", str(self.output_dir)]
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, cwd=COMFY_DIR, stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited ({self.proc.returncode}); log: {self.log_path}\n"
                                   + self.log_path.read_text()[-3000:])
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout}s; log: {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=30) as resp:
            return json.loads(resp.read())

    def post(self, path: str, payload: dict) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read() or b"{}")  # /interrupt answers with no body
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def queue(self, prompt: dict) -> tuple[int, dict]:
        return self.post("/prompt", {"prompt": prompt, "client_id": "ortho-hydra-devkit"})

    def _poll(self, finished, what: str, timeout: float):
        deadline = time.time() + timeout
        while time.time() < deadline:
            result = finished()
            if result is not None:
                return result
            time.sleep(0.25)
        raise TimeoutError(f"{what} did not finish within {timeout}s; log: {self.log_path}")

    def wait(self, prompt_id: str, timeout: float = 300.0) -> dict:
        """The /history entry once the prompt finished (successfully or not)."""
        def finished():
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            done = entry and entry.get("status", {}).get("completed") is not None and (
                entry["status"].get("status_str") in ("success", "error"))
            return entry if done else None

        return self._poll(finished, f"prompt {prompt_id}", timeout)

    def interrupt_until_done(self, prompt_id: str, timeout: float = 300.0) -> dict:
        """POST /interrupt until the prompt has ended (an interrupt sent before its execution starts is cleared by
        ComfyUI when it does start); its /history entry."""
        def finished():
            self.post("/interrupt", {})
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            return entry if entry and entry.get("status", {}).get("completed") is not None else None

        return self._poll(finished, f"interrupting prompt {prompt_id}", timeout)

    def wait_history(self, count: int, timeout: float = 600.0) -> list[dict]:
        """Every finished /history entry, once there are at least ``count`` (prompts queued from a browser)."""
        def finished():
            done = [h for h in self.get("/history").values() if h.get("status", {}).get("completed") is not None]
            return done if len(done) >= count else None

        return self._poll(finished, f"{count} prompts", timeout)

    def run(self, prompt: dict, timeout: float = 300.0) -> dict:
        status, body = self.queue(prompt)
        if status != 200:
            raise RuntimeError(f"/prompt refused the graph ({status}): {json.dumps(body)[:2000]}")
        return self.wait(body["prompt_id"], timeout)


def execution_error(entry: dict) -> dict | None:
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data
    return None


def output_images(entry: dict, output_dir: Path) -> list[Path]:
    """Saved images of a finished prompt (previews live in the temp folder and are not outputs)."""
    files = []
    for node_output in entry.get("outputs", {}).values():
        for image in node_output.get("images", []):
            if image.get("type", "output") == "output":
                files.append(Path(output_dir) / image.get("subfolder", "") / image["filename"])
    return files


def link_pack(custom_nodes: Path) -> Path:
    custom_nodes.mkdir(parents=True, exist_ok=True)
    link = custom_nodes / "comfyui-ortho-hydra"
    if not link.exists():
        link.symlink_to(ROOT, target_is_directory=True)
    return link
