"""Small process helpers shared by the generator, the peers and the bench runner.

Everything here is loopback-only and side-effect free apart from what the
function name says (raising a limit, reading /proc, picking a port).
"""

from __future__ import annotations

import logging
import os
import platform
import resource
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """``count`` ports as :func:`free_port`, all different (each held until all are found)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _children_map() -> dict[int, list[int]]:
    """Map pid -> child pids from /proc (one pass)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces: the ppid follows the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(pid: int) -> list[int]:
    """Return pid and all its descendants."""
    children = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def status_kb(pid: int, field: str) -> int:
    """A KB field of /proc/PID/status (VmRSS, VmHWM...) of one process (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pid: int) -> int:
    """VmRSS in KB of one process (0 if it is gone)."""
    return status_kb(pid, "VmRSS")


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds consumed so far by one process (0 if gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime and stime are fields 14 and 15 of stat(5); index 0 here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_rss_kb(pid: int) -> int:
    """Summed VmRSS in KB of a process and its descendants (server + workers)."""
    return sum(rss_kb(p) for p in process_tree(pid))


def tree_peak_rss_kb(pid: int) -> int:
    """Summed VmHWM (peak RSS so far) in KB of a process and its descendants.

    Exact for one process; for several it is an upper bound (their peaks need not coincide).
    """
    return sum(status_kb(p, "VmHWM") for p in process_tree(pid))


def wait_http_ok(url: str, timeout: float = 20.0, alive: Callable[[], bool] | None = None) -> None:
    """Poll url until it answers 2xx; raise TimeoutError otherwise (at once if alive() turns False)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise TimeoutError(f"server exited before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if 200 <= resp.status < 300:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s: {last}")


def wait_tcp(port: int, timeout: float = 20.0, alive: Callable[[], bool] | None = None) -> None:
    """Poll until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise TimeoutError(f"server exited before port {port} accepted")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} not accepting after {timeout}s")


def preexec_raise_limit() -> None:
    """preexec_fn for servers we start: they need the fd headroom too."""
    raise_nofile_limit()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Terminate a process we started (by its own pid), then kill if it lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.warning("pid %d ignored SIGTERM, killing", proc.pid)
        proc.kill()
        proc.wait(timeout=timeout)


def cpu_model() -> str:
    """CPU model string from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, object]:
    """Describe the machine the numbers were measured on."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nofile_limit": [soft, hard],
        "mem_total_kb": _meminfo_total_kb(),
    }


def _meminfo_total_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 0


def pin_current_process(cores: set[int]) -> bool:
    """Pin this process (and future children) to cores; False if not possible."""
    try:
        available = os.sched_getaffinity(0)
        if not cores <= available:
            return False
        os.sched_setaffinity(0, cores)
        return True
    except OSError:
        return False
