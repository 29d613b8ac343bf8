"""The dev OpenBao server behind a filter: its log without the root token and the unseal key.

Dev mode prints both in its start banner. The platform keeps the root token in a 0600 file
and has no use for the unseal key (in memory, never sealed), so neither belongs in the log
that supervisord or a test collects. ``python -m heater.runtime.vault_server BINARY ARGS...``
runs the server and passes its output on line by line; a stop signal goes on to the server,
this process ends with the server's exit code, and the server
dies with this process, even when it is killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import FrameType
from typing import Sequence

from heater.runtime.processes import die_with_parent

#: Banner lines whose value is a credential.
HIDDEN = ("Root Token:", "Unseal Key:")


def redact(line: str, secrets: Sequence[str]) -> str:
    """``line`` with a credential's value replaced (the banner's, or a known secret anywhere)."""
    body = line.lstrip()
    for label in HIDDEN:
        if body.startswith(label):
            return line[: len(line) - len(body)] + label + " (not shown)\n"
    for secret in secrets:
        if secret:
            line = line.replace(secret, "(not shown)")
    return line


def main(argv: Sequence[str]) -> int:
    server = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              text=True, errors="replace", bufsize=1, preexec_fn=die_with_parent)

    def forward(signum: int, frame: FrameType | None) -> None:
        if server.poll() is None:
            server.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    secrets = [os.environ.get("BAO_DEV_ROOT_TOKEN_ID", "")]
    assert server.stdout is not None
    for line in server.stdout:
        sys.stdout.write(redact(line, secrets))
        sys.stdout.flush()
    return server.wait()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
