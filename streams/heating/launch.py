"""How the controller runs a heating job: the launcher interface and the local child process.

A launcher starts one job process, reports whether jobs are still running (so "at
most one" holds across a controller restart where it can), and waits for a job's
exit code. The local launcher runs ``python -m streams.heating`` as a child process;
:mod:`streams.heating.k8s` creates a Kubernetes Job running the same command.
:func:`launcher_for` picks one by the settings' profile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol

from streams.settings import Settings

log = logging.getLogger(__name__)

JOB_MODULE = "streams.heating"


@dataclass(frozen=True)
class JobEnd:
    """How a job process ended: its exit code (None when it is unknown) and what was seen."""

    exit_code: int | None
    detail: str = ""


class LaunchError(RuntimeError):
    """The job could not be started (the process or the Job object was not created)."""


class Launcher(Protocol):
    async def start(self, job_id: str, target_c: float) -> None: ...

    async def wait(self, job_id: str) -> JobEnd: ...

    async def running(self) -> list[str]: ...

    async def terminate(self, job_id: str) -> None: ...


async def launcher_for(settings: Settings, log_dir: Path | None = None) -> Launcher:
    """Child processes under the local profile; Kubernetes Jobs in production, where a pod starts no job itself."""
    if settings.profile == "local":
        # The job's own certificate sits beside the bridge's (``secrets/tls/NAME``); it has no probe port.
        job_tls = settings.tls_dir_for("homekit").parent / "heating-job"
        return LocalLauncher(env={"HEATER_COMPONENT": "heating-job", "HEATER_TLS_DIR": str(job_tls),
                                  "HEATER_PROBE_PORT": "0"}, log_dir=log_dir)
    from streams.heating.k8s import production_launcher

    return await production_launcher(settings)


def job_args(job_id: str, target_c: float) -> list[str]:
    """The job's arguments, the same for a child process and a Kubernetes container."""
    return ["--target", repr(float(target_c)), "--job-id", job_id]


class LocalLauncher:
    """Heating jobs as child processes of the controller (the local platform).

    ``env`` is the job's environment (the platform's settings for a process named
    ``heating-job``); the job's health server binds an ephemeral port unless ``env``
    names one. Each job's output goes to ``log_dir/heating-job-<id>.log``.
    """

    def __init__(self, env: Mapping[str, str] | None = None, log_dir: Path | None = None, python: str = sys.executable) -> None:
        self.env = {**os.environ, "HEATER_WEB_PORT": "0", **(env or {})}
        self.log_dir = log_dir
        self.python = python
        self._procs: dict[str, asyncio.subprocess.Process] = {}

    def log_path(self, job_id: str) -> Path | None:
        return None if self.log_dir is None else self.log_dir / f"heating-job-{job_id}.log"

    async def start(self, job_id: str, target_c: float) -> None:
        for ended in [j for j, proc in self._procs.items() if proc.returncode is not None]:
            del self._procs[ended]
        path = self.log_path(job_id)
        out = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            out = open(path, "ab")
        try:
            self._procs[job_id] = await asyncio.create_subprocess_exec(
                self.python, "-m", JOB_MODULE, *job_args(job_id, target_c),
                env=self.env, stdout=out, stderr=asyncio.subprocess.STDOUT if out else None, start_new_session=True,
            )
        except OSError as exc:
            raise LaunchError(f"cannot start the heating job process: {exc}") from exc
        finally:
            if out is not None:
                out.close()
        log.info("heating job %s started as pid %d", job_id, self._procs[job_id].pid)

    async def wait(self, job_id: str) -> JobEnd:
        code = await self._procs[job_id].wait()
        return JobEnd(code, f"process exited with {code}")

    async def running(self) -> list[str]:
        return [job_id for job_id, proc in self._procs.items() if proc.returncode is None]

    async def terminate(self, job_id: str) -> None:
        """SIGTERM one job (it closes the gas on the way out)."""
        proc = self._procs.get(job_id)
        if proc is not None and proc.returncode is None:
            os.killpg(proc.pid, signal.SIGTERM)
