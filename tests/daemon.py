"""A real `flowforged run` in a subprocess: for crash, signal, systemd and log tests."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DaemonProcess:
    def __init__(
        self, tmp: Path, config: dict[str, Any], env: dict[str, str] | None = None, open_files: int | None = None
    ):
        self.tmp = tmp
        self.open_files = open_files  # RLIMIT_NOFILE of the daemon, when a test needs it low
        self.port = free_port()
        config = {**config, "server": {**config.get("server", {}), "listen": f"127.0.0.1:{self.port}"}}
        self.config_path = tmp / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.env = {**os.environ, **(env or {})}
        self.log_path = tmp / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify_path = tmp / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(0.1)
        self.messages: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        env = {**self.env, "NOTIFY_SOCKET": str(self.notify_path), "PYTHONUNBUFFERED": "1"}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flowforged", "-c", str(self.config_path), "run"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=self._limits if self.open_files else None,  # noqa: PLW1509 (no threads in the child)
        )
        self.wait_message("READY=1", timeout)

    def _limits(self) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def status(self, field: str) -> int:
        """A field of /proc/PID/status in kB (VmHWM is the peak resident set size)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise KeyError(field)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the daemon has used so far, from /proc/PID/stat."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wait_message(self, message: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if message in self.messages:
                return
            try:
                self.messages.append(self.notify.recv(4096).decode())
            except TimeoutError:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"flowforged exited with {self.proc.returncode}:\n{self.output()}") from None
        raise TimeoutError(f"no {message} from flowforged within {timeout}s:\n{self.output()}")

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.proc = None
        self.messages.clear()
        return code

    async def akill(self, sig: int = signal.SIGKILL) -> int:
        return await asyncio.to_thread(self.kill, sig)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()
