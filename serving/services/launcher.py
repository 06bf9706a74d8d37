"""Process supervision for `zoo up`: every service as a local `zoo serve` subprocess.

- Each service runs in its own session / process group (`start_new_session`), so a stop signal reaches
  the service and anything it spawned, and a terminal's Ctrl-C reaches only the launcher, which then
  stops the children in order. On Linux the children also get PR_SET_PDEATHSIG=SIGTERM: if the launcher
  is killed outright, the kernel still stops them (no orphans).
- Readiness: GET {url}/health answers 200. A child that exits while starting fails the start with the
  tail of its log.
- Supervision: a child that dies while the stack runs is restarted with exponential backoff, at most
  `max_restarts` times; after that the stack is stopped and `supervise` returns the reason.
- Stop: SIGTERM to every process group (uvicorn shuts down gracefully: lifespan, manager.stop), wait
  `grace_s`, then SIGKILL the groups still alive.

Blocking code (threads and subprocesses), used from the synchronous CLI.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

PR_SET_PDEATHSIG = 1


def _child_setup() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass


def group_members(pgid: int) -> list[int]:
    """PIDs whose process group is `pgid` (Linux /proc; empty elsewhere)."""
    out = []
    proc = Path("/proc")
    if not proc.is_dir():
        return out
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid:
            out.append(int(d.name))
    return out


@dataclass
class ServiceProcess:
    """One supervised `zoo serve` child."""

    name: str
    url: str
    cmd: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    health: dict[str, Any] | None = None
    next_restart_at: float = 0.0

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Launcher:
    """Starts, watches and stops a set of services (see the module docstring)."""

    zoo_path: Path
    services: Mapping[str, str]  # name -> base URL
    host: str = "127.0.0.1"
    log_dir: Path = Path(".zoo/logs")
    python: str = sys.executable
    #: the children's environment (the CLI passes `Settings.overrides`, the environment it read once)
    env: Mapping[str, str] = field(default_factory=dict)
    grace_s: float = 20.0
    max_restarts: int = 3
    restart_backoff_s: float = 2.0
    poll_s: float = 0.5
    procs: dict[str, ServiceProcess] = field(default_factory=dict)
    on_event: Callable[[str, str], None] = lambda name, msg: None

    def command(self, name: str) -> list[str]:
        port = self.services[name].rsplit(":", 1)[-1].split("/")[0]
        return [self.python, "-m", "serving.cli", "serve", name, "--zoo", str(self.zoo_path),
                "--host", self.host, "--port", port]

    def _child_env(self) -> dict[str, str]:
        env = dict(self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["ZOO_CONFIG"] = str(self.zoo_path)
        return env

    # ------------------------------------------------------------------ start
    def _spawn(self, p: ServiceProcess) -> None:
        p.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(p.log_path, "ab")  # noqa: SIM115 - the child owns the descriptor after fork
        try:
            p.popen = subprocess.Popen(p.cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       env=self._child_env(), start_new_session=True, preexec_fn=_child_setup)
        finally:
            log.close()
        p.started_at = time.monotonic()
        self.on_event(p.name, f"started pid {p.popen.pid}")

    def start(self, names: Iterable[str] | None = None) -> None:
        for name in names or self.services:
            p = ServiceProcess(name, self.services[name], self.command(name), Path(self.log_dir) / f"{name}.log")
            self.procs[name] = p
            self._spawn(p)

    def _health(self, client: httpx.Client, p: ServiceProcess) -> tuple[int | None, dict[str, Any] | None]:
        try:
            r = client.get(f"{p.url}/health", timeout=2.0)
        except httpx.HTTPError:
            return None, None
        try:
            body = r.json()
        except ValueError:
            body = None
        return r.status_code, body if isinstance(body, dict) else None

    def wait_ready(self, timeout_s: float = 600.0, stop: threading.Event | None = None) -> dict[str, str]:
        """Wait until every child answers /health with 200. Returns {name: "ready" | reason}; raises
        RuntimeError when a child exits while starting."""
        deadline = time.monotonic() + timeout_s
        pending = set(self.procs)
        result: dict[str, str] = {}
        with httpx.Client() as client:
            while pending:
                for name in sorted(pending):
                    p = self.procs[name]
                    if not p.alive():
                        code = p.popen.returncode if p.popen else None
                        raise RuntimeError(f"{name} exited with code {code} while starting; log {p.log_path}:\n"
                                           f"{p.log_tail()}")
                    status, body = self._health(client, p)
                    p.health = body
                    if status == 200:
                        pending.discard(name)
                        result[name] = "ready"
                        self.on_event(name, f"ready in {time.monotonic() - p.started_at:.1f}s")
                if not pending:
                    break
                if time.monotonic() > deadline:
                    for name in pending:
                        st = (self.procs[name].health or {}).get("state")
                        result[name] = f"not ready after {timeout_s:g}s" + (f" (state {st})" if st else "")
                    break
                if stop is not None and stop.wait(self.poll_s):
                    for name in pending:
                        result[name] = "interrupted"
                    break
                if stop is None:
                    time.sleep(self.poll_s)
        return result

    def refresh_health(self) -> None:
        with httpx.Client() as client:
            for p in self.procs.values():
                p.health = self._health(client, p)[1]

    # ------------------------------------------------------------------ supervise
    def check(self) -> str | None:
        """One supervision step: restart dead children (with backoff). Returns a reason to stop, or None."""
        now = time.monotonic()
        for p in self.procs.values():
            if p.alive() or p.popen is None:
                continue
            if p.next_restart_at == 0.0:
                if p.restarts >= self.max_restarts:
                    return (f"{p.name} died {p.restarts + 1} times (last exit code {p.popen.returncode}); "
                            f"log {p.log_path}")
                p.next_restart_at = now + self.restart_backoff_s * (2 ** p.restarts)
                self.on_event(p.name, f"exited with code {p.popen.returncode}; restarting in "
                                      f"{p.next_restart_at - now:.0f}s")
            elif now >= p.next_restart_at:
                p.restarts += 1
                p.next_restart_at = 0.0
                self._spawn(p)
        return None

    def supervise(self, stop: threading.Event, interval_s: float = 1.0) -> str | None:
        """Until `stop` is set: watch the children. Returns why it ended (None when asked to stop)."""
        while not stop.wait(interval_s):
            reason = self.check()
            if reason:
                return reason
        return None

    # ------------------------------------------------------------------ stop
    def stop(self) -> dict[str, int | None]:
        """SIGTERM every process group, then SIGKILL after `grace_s`. Returns {name: exit code}."""
        for p in self.procs.values():
            if p.alive():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.popen.pid, signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + self.grace_s
        for p in self.procs.values():
            if p.popen is None:
                continue
            try:
                p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.on_event(p.name, f"did not stop within {self.grace_s:g}s; killing")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.popen.pid, signal.SIGKILL)
                p.popen.wait()
        # anything left in a group (a grandchild that ignored SIGTERM) goes too
        for p in self.procs.values():
            if p.popen is not None and group_members(p.popen.pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.popen.pid, signal.SIGKILL)
        return {n: (p.popen.returncode if p.popen else None) for n, p in self.procs.items()}
