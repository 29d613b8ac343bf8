"""Child processes of the local runtime: start, wait until ready, stop without strays."""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Collection, Sequence

log = logging.getLogger(__name__)


class StartupTimeout(RuntimeError):
    """A child process did not become ready in time; the message points at its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


#: Listening ports are drawn from here: below the kernel's range for outgoing connections.
LISTEN_PORTS_FROM = 20000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _listen_port_range() -> range:
    """Ports no outgoing connection is given: a port chosen here now is still free when its server binds it.

    The kernel hands every outgoing connection (a client's, the broker's, Faust's) a port from
    its ephemeral range; a listening port chosen from that range can be taken by one in the
    moment between choosing it and binding it. Outside Linux: the whole unprivileged range.
    """
    try:
        low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return range(LISTEN_PORTS_FROM, 65536)
    return range(LISTEN_PORTS_FROM, low) if low - LISTEN_PORTS_FROM >= 1000 else range(1024, low)


def free_ports(count: int, *, avoid: Collection[int] = (), next_free: Collection[int] = ()) -> list[int]:
    """``count`` different free ports, outside the range outgoing connections use, all bound at once.

    None of them is in ``avoid``: ports already promised to servers that have not bound them
    yet (a platform's address book, while its services start). For each position in
    ``next_free`` the port after the one drawn is free as well and none of the others: OpenBao's
    dev server also listens on the port after its own, for its cluster, and a service given
    that port could not start while Vault runs.
    """
    candidates = _listen_port_range()
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for port in random.sample(candidates, min(len(candidates), count * 20)):
            wanted = (port, port + 1) if len(ports) in next_free else (port,)
            if any(p in avoid for p in wanted):
                continue
            bound = [sock for sock in map(_bound, wanted) if sock is not None]
            if len(bound) < len(wanted):
                for sock in bound:
                    sock.close()
                continue
            held.extend(bound)
            ports.append(port)
            if len(ports) == count:
                return ports
        raise OSError(f"no {count} free ports in {candidates.start}-{candidates.stop - 1} on 127.0.0.1")
    finally:
        for sock in held:
            sock.close()


def _bound(port: int) -> socket.socket | None:
    """A socket bound to ``port`` on 127.0.0.1 (held so no other draw takes it), or None if it is taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    return sock


def die_with_parent() -> None:
    """In a child before exec (``preexec_fn``): the kernel kills it when its parent dies, even by SIGKILL.

    For a server run behind a wrapper process (the broker's gate, Vault's log filter): a
    wrapper killed alone would leave the server holding its port, and the wrapper's restart
    could not bind it.
    """
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def die_with_process_manager() -> None:
    """A program of the local platform's supervisord dies with it.

    Left behind by a supervisord that died (killed, out of memory), the services would run on
    unsupervised, the edge adapters kicking the Pico with no one to restart a crash, and hold
    ports and the CAN bus a new ``heater up`` needs. Their safety never rests on running on:
    killed, the Pico's watchdog makes the board safe, as for any kill -9. Outside supervisord
    (Kubernetes, a test's own process) nothing changes.
    """
    if not os.environ.get("SUPERVISOR_ENABLED"):
        return
    parent = os.getppid()
    die_with_parent()
    if os.getppid() != parent:  # it died before the kernel was told
        os._exit(1)


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll ``predicate`` until true; return the seconds waited or raise :class:`StartupTimeout`."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        try:
            if predicate():
                return time.monotonic() - start
        except StartupTimeout:
            raise
        except Exception as exc:  # a probe that fails is simply "not ready yet"
            log.debug("%s not ready: %s", what, exc)
        if time.monotonic() >= deadline:
            raise StartupTimeout(f"{what} not ready after {timeout:.0f} s")
        time.sleep(interval)


class ChildProcess:
    """A process in its own process group, logging to a file in the run directory."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "ChildProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} not started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> bool:
        """For readiness probes: a dead child is an error with its log, not a slow start."""
        if self.proc is not None and self.proc.poll() is not None:
            raise StartupTimeout(
                f"{self.name} exited with {self.proc.returncode}; see {self.log_path}:\n{self.tail()}"
            )
        return True

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.killpg(self.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the whole group, then SIGKILL what is left after ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", self.name, timeout)
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.proc.wait()
