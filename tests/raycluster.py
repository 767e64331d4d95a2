"""A real multi-node Ray cluster on this machine: a head and worker nodes from `ray start --block`.

Each node is its own `ray start --block` process with its own temp dir; stopping a node ends that
process group only (never `ray stop`, which would kill every Ray process on the machine), and
killing a node SIGKILLs its raylet the way a lost machine would. Used by the tests and by
benchmarks/bench_node_loss.py.

Every process of the cluster, drivers included (``Cluster.wrap``), runs in a network namespace of
its own that has only a loopback interface: Ray would otherwise bind the machine's outward address
for a multi-node cluster (it rewrites 127.0.0.1), and nothing here may listen or talk beyond
loopback. Needs root (unshare/nsenter); ``Cluster.available()`` says whether it can run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# the ray script beside this interpreter, else on PATH (a venv made with --system-site-packages has
# ray's package but not its script)
RAY = (str(Path(sys.executable).with_name("ray")) if Path(sys.executable).with_name("ray").exists()
       else shutil.which("ray") or "ray")
#: what every process of a test cluster needs, drivers included: no usage stats, and no token
#: authentication (a local test cluster; Ray 2.5x enables tokens for `ray start --head` by default)
DRIVER_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}


@dataclass
class Node:
    """One `ray start --block` process (its own session group) and its temp dir."""

    proc: subprocess.Popen
    temp_dir: Path
    log: Path

    def raylet_pids(self) -> list[int]:
        """Pids of this node's raylet processes (found in /proc by the node's temp dir)."""
        return [pid for pid, cmd in _processes() if cmd and cmd[0].endswith("/raylet") and
                any(str(self.temp_dir) in part for part in cmd)]

    def kill_raylet(self) -> int:
        """SIGKILL the raylet (a node lost mid-run); returns its pid."""
        pids = self.raylet_pids()
        assert pids, f"no raylet under pid {self.proc.pid}"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        return pids[0]

    def stop(self) -> None:
        """End this node's whole process group (the `ray start` process and everything it started)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=3)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _kill_leftovers(self.temp_dir)


def _processes() -> list[tuple[int, list[str]]]:
    """(pid, argv) of every process visible in /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            out.append((int(entry.name), [a.decode(errors="replace") for a in argv if a]))
    return out


def _kill_leftovers(temp_dir: Path) -> None:
    """Processes of this node that escaped its group (Ray workers re-parent): matched by temp dir."""
    needle = str(temp_dir)
    for pid, cmd in _processes():
        if pid != os.getpid() and any(needle in part for part in cmd):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@dataclass
class Cluster:
    """A head node plus worker nodes on 127.0.0.1 of a private network namespace."""

    port: int = 6390
    nodes: list[Node] = field(default_factory=list)
    env: dict = field(default_factory=dict)
    netns: subprocess.Popen | None = None

    @staticmethod
    def available() -> str | None:
        """None when a namespaced cluster can start here, else the reason it cannot."""
        if os.geteuid() != 0:
            return "a private network namespace needs root"
        for tool in ("unshare", "nsenter", "ip"):
            if not shutil.which(tool):
                return f"{tool} is not installed"
        return None

    def _ensure_netns(self) -> None:
        if self.netns is not None:
            return
        self.netns = subprocess.Popen(["unshare", "-n", "--", "sh", "-c", "ip link set lo up && exec sleep 86400"],
                                      start_new_session=True)
        deadline = time.time() + 10
        while time.time() < deadline:
            up = subprocess.run(self.wrap(["ip", "-o", "link", "show", "lo"]), capture_output=True, text=True)
            if "UP" in up.stdout.split("state")[0]:
                return
            time.sleep(0.05)
        raise RuntimeError("the network namespace's loopback did not come up")

    def wrap(self, cmd: list[str]) -> list[str]:
        """``cmd`` run inside the cluster's network namespace (drivers must join it to reach the head)."""
        self._ensure_netns()
        return ["nsenter", f"--net=/proc/{self.netns.pid}/ns/net", "--", *cmd]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, args: list[str], cpus: int) -> Node:
        temp_dir = Path(tempfile.mkdtemp(prefix="ebr", dir="/tmp"))  # short: Ray's socket paths are limited
        log = temp_dir / "ray-start.log"
        env = dict(os.environ, **DRIVER_ENV, **self.env)
        cmd = [RAY, "start", "--block", "--num-cpus", str(cpus), "--num-gpus", "0", "--temp-dir", str(temp_dir),
               "--object-store-memory", str(200 * 1024 * 1024), "--disable-usage-stats", *args]
        proc = subprocess.Popen(self.wrap(cmd), stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        node = Node(proc, temp_dir, log)
        self.nodes.append(node)
        return node

    def start_head(self, cpus: int = 1) -> Node:
        """Start the head node and wait until it answers."""
        node = self._start(["--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
                            "--include-dashboard", "false"], cpus)
        self._wait_started(node)
        return node

    def add_worker(self, cpus: int = 1) -> Node:
        """Start one more worker node and wait until the cluster counts it."""
        node = self._start(["--address", self.address, "--node-ip-address", "127.0.0.1"], cpus)
        self._wait_started(node)
        return node

    def _wait_started(self, node: Node, timeout: float = 120) -> None:
        """`ray start` prints "Ray runtime started" once the node has registered with the head."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = node.log.read_text() if node.log.exists() else ""
            if "Ray runtime started" in text:
                return
            if node.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {node.proc.returncode}:\n{text[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"ray start did not finish in {timeout:g} s:\n{node.log.read_text()[-3000:]}")

    def replace_worker(self, i: int, cpus: int = 1) -> Node:
        """Stop node ``i`` (dead or alive) and start a fresh worker node in its place."""
        self.nodes[i].stop()
        node = self.add_worker(cpus)
        self.nodes.remove(node)
        self.nodes[i] = node
        return node

    def stop(self) -> None:
        """Stop every node this cluster started (workers first), and remove their temp dirs."""
        for node in reversed(self.nodes):
            node.stop()
        for node in self.nodes:
            shutil.rmtree(node.temp_dir, ignore_errors=True)
        self.nodes = []
        if self.netns is not None:
            self.netns.kill()
            self.netns.wait()
            self.netns = None
