"""The service's processes under a chaos run: started, SIGKILLed, SIGTERMed, restarted on damaged state.

Each process keeps its RocksDB state directory across restarts (as a pod with a volume would), except
when a run empties it or puts back an older copy of it on purpose. Peak RSS is sampled per process
name over all its lives.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from postback_router.embedded_broker import free_loopback_port


def rss_mb(pid: int) -> float | None:
    """Resident set size of a live process, from /proc (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class Processes:
    env: dict[str, str]
    workdir: str
    rng: random.Random
    commands: dict[str, tuple[str, ...]]
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    started_at: dict[str, float] = field(default_factory=dict)
    kills: int = 0
    killed: Counter[str] = field(default_factory=Counter)
    dispatcher_kills: list[float] = field(default_factory=list)  # time.monotonic() of each SIGKILL
    events: list[str] = field(default_factory=list)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    t0: float = 0.0
    stopping: set[str] = field(default_factory=set)  # being stopped on purpose: not a crash when it exits

    def note(self, text: str) -> None:
        """An event of the run, with its time since sending began (t0)."""
        self.events.append(f"[{time.monotonic() - self.t0:.0f}s] {text}")

    def state_dir(self, name: str) -> str:
        return os.path.join(self.workdir, "state", name)

    def log_path(self, name: str) -> str:
        return os.path.join(self.workdir, f"{name}.log")

    def start(self, name: str) -> None:
        os.makedirs(self.state_dir(name), exist_ok=True)
        env = {
            **self.env,
            "STATE_DIR": self.state_dir(name),
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(free_loopback_port()),
        }
        with open(self.log_path(name), "ab") as log:
            self.running[name] = subprocess.Popen(
                [sys.executable, "-m", "postback_router.cli", *self.commands[name]],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.started_at[name] = time.monotonic()
        self.stopping.discard(name)

    def start_all(self) -> None:
        for name in self.commands:
            self.start(name)

    def pick(self, prefix: str = "") -> str:
        return self.rng.choice(sorted(n for n in self.commands if n.startswith(prefix)))

    def sigkill(self, name: str) -> None:
        process = self.running[name]
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
        self.kills += 1
        self.killed[name] += 1
        if name.startswith("dispatcher"):
            self.dispatcher_kills.append(time.monotonic())

    def kill_and_restart(self, name: str, state: str = "kept", stale_copy: str | None = None) -> None:
        """SIGKILL `name` and start it again on its state directory: `kept`, `emptied`, or `stale` (the
        copy taken earlier by `snapshot`)."""
        self.sigkill(name)
        if state == "emptied":
            shutil.rmtree(self.state_dir(name), ignore_errors=True)
        elif state == "stale" and stale_copy is not None:
            shutil.rmtree(self.state_dir(name), ignore_errors=True)
            shutil.copytree(stale_copy, self.state_dir(name))
        self.start(name)
        self.note(f"SIGKILL {name}, restarted on {state} state")

    def snapshot(self, name: str) -> str:
        """A copy of a stopped process's state directory, to put back later as stale state."""
        copy = os.path.join(self.workdir, "stale", name)
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(self.state_dir(name), copy)
        return copy

    def sigterm(self, name: str, timeout: float = 60.0) -> float:
        """A graceful stop; returns how long the process took to exit."""
        process = self.running[name]
        began = time.monotonic()
        self.stopping.add(name)  # before the signal: restart_exited must not take its exit for a crash
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                self.note(f"SIGTERM {name}: still running after {timeout:.0f}s, killed")
        return time.monotonic() - began

    def restart_exited(self) -> list[str]:
        """Processes that exited on their own (a crash) are restarted too, and named in the progress line."""
        exited = [
            name for name, process in self.running.items() if name not in self.stopping and process.poll() is not None
        ]
        for name in exited:
            self.note(f"{name} exited on its own with status {self.running[name].returncode}")
            self.start(name)
        return exited

    def sample_rss(self) -> None:
        for name, process in self.running.items():
            mb = rss_mb(process.pid)
            if mb is not None:
                self.peak_rss_mb[name] = max(self.peak_rss_mb.get(name, 0.0), mb)

    def stop_all(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
