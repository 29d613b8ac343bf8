"""Process supervision by ``supervisord``: one program per component.

Exit codes follow the platform's table: ``0`` (done) and ``3`` (FATAL, stay down) are
expected and never restarted; anything else is a crash and is restarted.
``startsecs=0`` so that a quick stay-down exit is not mistaken for a failed start.
Programs are not started by supervisord itself: ``heater up`` starts them stage by
stage, each after the stages before it are ready.
"""

from __future__ import annotations

import time
import xmlrpc.client
from http.client import HTTPException
from typing import Any

from heater.catalogue import COMPONENTS, Component
from heater.rundir import Layout
from streams import exitcodes
from streams.discovery import supervisor_rpc

#: How long a process may take to stop after SIGTERM before supervisord kills it.
STOP_WAIT_S = 15


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def program_section(layout: Layout, component: Component) -> str:
    env = layout.service_env(component.name)
    env_line = ",".join(f"{k}={_quote(v)}" for k, v in sorted(env.items()))
    command = " ".join(component.argv()).replace("%", "%%")
    codes = ",".join(str(c) for c in exitcodes.NOT_RESTARTED)
    log = layout.logs / f"{component.name}.log"
    return f"""
[program:{component.name}]
command={command}
directory={layout.run_dir}
environment={env_line}
autostart=false
autorestart=unexpected
exitcodes={codes}
startsecs=0
startretries=5
stopsignal=TERM
stopwaitsecs={STOP_WAIT_S}
stopasgroup=true
killasgroup=true
priority={100 + component.stage * 10}
redirect_stderr=true
stdout_logfile={log}
stdout_logfile_maxbytes=20MB
stdout_logfile_backups=2
"""


def render_config(layout: Layout) -> str:
    """The supervisord configuration for every component of the platform."""
    head = f"""
[unix_http_server]
file={layout.supervisor_socket}
chmod=0700

[supervisord]
nodaemon=true
logfile={layout.logs / 'supervisord.log'}
pidfile={layout.run_dir / 'supervisord.pid'}
childlogdir={layout.logs}
loglevel=info

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{layout.supervisor_socket}
"""
    return head + "".join(program_section(layout, c) for c in COMPONENTS)


def write_config(layout: Layout) -> None:
    layout.logs.mkdir(parents=True, exist_ok=True)
    layout.supervisor_conf.write_text(render_config(layout))


class Supervisor:
    """A thin XML-RPC client for the platform's supervisord (over its unix socket)."""

    def __init__(self, layout: Layout) -> None:
        self._socket = layout.supervisor_socket

    @property
    def rpc(self) -> Any:
        return supervisor_rpc(self._socket)

    def running(self) -> bool:
        try:
            return self.rpc.getState()["statename"] == "RUNNING"
        except (OSError, HTTPException, xmlrpc.client.Fault):
            return False

    def start(self, name: str) -> None:
        try:
            self.rpc.startProcess(name, False)
        except xmlrpc.client.Fault as fault:
            if "ALREADY_STARTED" not in fault.faultString:
                raise

    def stop(self, name: str, wait: bool = True) -> None:
        try:
            self.rpc.stopProcess(name, wait)
        except xmlrpc.client.Fault as fault:
            if "NOT_RUNNING" not in fault.faultString:
                raise

    def stop_together(self, names: list[str], timeout: float = STOP_WAIT_S + 5) -> list[str]:
        """Stop several processes at once and wait for all of them; the names still up at the timeout.

        Processes of one start stage do not depend on each other, so they shut down in
        parallel: one after the other, a platform's stop took as long as every worker's
        shutdown added up.
        """
        for name in names:
            self.stop(name, wait=False)
        deadline = time.monotonic() + timeout
        while True:
            processes = self.all_info()
            up = [n for n in names if processes.get(n, {}).get("statename") in ("RUNNING", "STOPPING", "STARTING", "BACKOFF")]
            if not up or time.monotonic() > deadline:
                return up
            time.sleep(0.1)

    def info(self, name: str) -> dict[str, Any]:
        return self.rpc.getProcessInfo(name)

    def all_info(self) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in self.rpc.getAllProcessInfo()}

    def shutdown(self) -> None:
        try:
            self.rpc.shutdown()
        except (OSError, HTTPException, xmlrpc.client.Fault):
            pass
