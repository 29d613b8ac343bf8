"""`heater up` brings the whole local platform to ready; `status` reports it; Ctrl-C leaves nothing.

On the way, every service is called with an API token from `heater login` (accepted, refused
for a bad signature, refused for too low a role) and the status page is opened through a
`heater dashboard` link; every service runs without the Vault root token (its own AppRole at
most); once the platform stopped, no log of the run holds the token, the link's ticket, the
session cookie, the root token, a service's role_id or secret_id, or anything shaped like a JWT.
A supervisord killed on its own leaves no process of the platform behind either.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

from bench.procstats import tree_pids
from heater import credentials
from heater.catalogue import COMPONENTS, FATAL_PATH_EDGE
from heater.platform import Platform
from heater.probes import http_json
from heater.rundir import Layout
from heater.runtime.pki import CLI_SUBJECT, tls_dir, tls_subjects
from heater.runtime.vault import approle_files
from streams.vault_policies import SERVICE_GRANTS
from tests.platform_view import SERVICES
from tests.support import may_raise_priority, post_json, wait_for

#: A JWT (header and claims are base64url JSON objects, so both start with ``eyJ``).
JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.")


def heater(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "heater", "--run-dir", str(run_dir), *args], capture_output=True, text=True, timeout=60
    )


def pid_alive(pid: int) -> bool:
    """Running, not a zombie; a process reaped while we look is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_up_status_and_clean_stop(tmp_path: Path) -> None:
    run_dir = tmp_path / "platform"
    assert heater(run_dir, "status").returncode == 1, "no platform yet: status says so and fails"
    up = subprocess.Popen(
        [sys.executable, "-m", "heater", "--run-dir", str(run_dir), "up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        report = wait_for(
            lambda: (lambda r: json.loads(r.stdout) if r.returncode == 0 else None)(heater(run_dir, "status", "--json")),
            timeout=60,
            interval=0.5,
            what="platform ready",
        )
        names = {c["name"]: c for c in report["components"]}
        assert {"broker", "vault", "alarms"} <= set(names)
        assert all(c["state"] == "ready" for c in names.values())
        pids = [c["pid"] for c in names.values()]
        assert all(pids) and all(pid_alive(p) for p in pids)
        assert all(c["port"] for c in names.values())
        human = heater(run_dir, "status")
        assert human.returncode == 0 and "READY" in human.stdout
        secrets = {**use_the_api(run_dir), **vault_credentials(run_dir)}
        assert_services_hold_no_root_token(run_dir, {c["name"]: c["pid"] for c in names.values()})
        assert_fatal_path_goes_first({c["name"]: c["pid"] for c in names.values()})

        supervisord_pid = int((run_dir / "supervisord.pid").read_text())
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=60)
        assert up.returncode == 0, out
        assert "platform ready in" in out and "stopped." in out
        leftovers = [p for p in [*pids, supervisord_pid] if pid_alive(p)]
        assert leftovers == [], f"stray processes after Ctrl-C: {leftovers}"
        assert heater(run_dir, "status").returncode == 1
        assert_no_secret_logged(run_dir, out, secrets)
    finally:
        if up.poll() is None:  # stop the platform it started, not only the command
            up.send_signal(signal.SIGINT)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                up.kill()


def test_no_process_outlives_a_killed_process_manager(tmp_path: Path) -> None:
    """supervisord killed (out of memory, a crash): every process of the platform dies with it, none
    runs on unsupervised holding its port, the CAN bus or the Pico's watchdog."""
    platform = Platform(tmp_path / "platform")
    try:
        platform.start(timeout=120)
        assert platform.supervisord is not None
        manager = platform.supervisord.pid
        programs = {name: info["pid"] for name, info in platform.supervisor.all_info().items()}
        assert set(programs) == {c.name for c in COMPONENTS} and all(programs.values()), programs
        tree = [pid for pid in tree_pids(manager) if pid != manager]
        assert len(tree) > len(programs), "the broker binary and the simulated Pico run below their programs"
        os.kill(manager, signal.SIGKILL)
        wait_for(lambda: not [pid for pid in tree if pid_alive(pid)], 10, 0.1, "every process gone with supervisord")
    finally:
        platform.stop()


def nice_value(pid: int) -> int:
    """The process's nice value (field 19 of ``/proc/PID/stat``, after the command's parentheses)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[16])


def assert_fatal_path_goes_first(pids: dict[str, int]) -> None:
    """The edge adapters go first, the broker and the simulated hardware at the platform's own
    priority; services off the path from a reading to the power cut-off yield the CPU to those on
    it, and the services that decide every reading (the FATAL limit's second judges) stand between."""
    nice = {name: nice_value(pid) for name, pid in pids.items()}
    edge = {name: nice[name] for name in ("can", "i2c")}
    on_path = {name: nice[name] for name in ("broker", "simulator")}
    deciders = {name: nice[name] for name in ("bank", "disaster")}
    off_path = {name: nice[name] for name in ("config", "secrets", "registry", "exceptions", "alarms", "homekit")}
    base = nice_value(os.getpid())
    first = base + FATAL_PATH_EDGE if may_raise_priority() else base
    assert set(edge.values()) == {first}, f"the edge adapters go first where the platform may raise them: {nice}"
    assert set(on_path.values()) == {base}, f"the rest of the FATAL path runs at the platform's own priority: {nice}"
    assert all(base < value < min(off_path.values()) for value in deciders.values()), f"deciders in between: {nice}"
    assert all(value > base for value in off_path.values()), f"services off the FATAL path yield to it: {nice}"


def use_the_api(run_dir: Path) -> dict[str, str]:
    """Log in, call every service with the token (and with a forged one, and one role too low), open the
    status page through a one-time link; the secrets this handled, by what they are."""
    login = heater(run_dir, "login", "--role", "viewer", "--user", "tester")
    assert login.returncode == 0 and "logged in as tester with role viewer" in login.stdout, login.stdout + login.stderr
    token = credentials.token_file(run_dir).read_text().strip()
    assert token not in login.stdout + login.stderr
    layout = Layout.load(run_dir)
    for name in SERVICES:
        assert http_json(layout.web_url(name) + "/status", timeout=5, token=token)[0] == 200, name
        assert http_json(layout.web_url(name) + "/status", timeout=5)[0] == 401, name
    forged = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
    assert http_json(layout.web_url("alarms") + "/latch", timeout=5, token=forged)[0] == 401
    assert post_json(layout.web_url("alarms") + "/reset", {"occurrences": []}, token=token)[0] == 403

    link = heater(run_dir, "dashboard")
    assert link.returncode == 0, link.stdout + link.stderr
    url = link.stdout.strip().splitlines()[-1]
    ticket = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["ticket"][0]
    jar = http.cookiejar.CookieJar()
    # A browser trusts the platform CA and presents no client certificate: its session is enough for the page.
    trusting = ssl.create_default_context(cafile=str(tls_dir(layout.secrets_dir, CLI_SUBJECT) / "ca.crt"))
    browser = urllib.request.build_opener(urllib.request.HTTPSHandler(context=trusting),
                                          urllib.request.HTTPCookieProcessor(jar))
    with browser.open(url, timeout=10) as page:  # the ticket for a cookie, then the page with it
        assert page.status == 200 and "Heater platform" in page.read().decode()
    (session,) = [c.value for c in jar if c.name == "heater_session"]
    return {"token": token, "forged token": forged, "ticket": ticket, "session cookie": session}


def vault_credentials(run_dir: Path) -> dict[str, str]:
    """The root token and every service's AppRole credentials, by what they are."""
    layout = Layout.load(run_dir)
    found = {"Vault root token": layout.vault_token_file.read_text().strip()}
    for name in SERVICE_GRANTS:
        for path in approle_files(layout.secrets_dir, name):
            found[f"{path.name} of {name}"] = path.read_text().strip()
    for subject in tls_subjects():
        key = (tls_dir(layout.secrets_dir, subject) / "tls.key").read_text().splitlines()
        found[f"private key of {subject}"] = max(key, key=len)  # a line of the key itself, not its PEM frame
    return found


def assert_services_hold_no_root_token(run_dir: Path, pids: dict[str, int]) -> None:
    """Started the normal way (supervisord), a service's environment has its AppRole at most, never the root token."""
    root = Layout.load(run_dir).vault_token_file.read_text().strip().encode()
    for name in SERVICES:
        environ = Path(f"/proc/{pids[name]}/environ").read_bytes()
        assert root not in environ and b"HEATER_VAULT_TOKEN_FILE" not in environ, name
        assert (b"HEATER_VAULT_SECRET_ID_FILE" in environ) == (name in SERVICE_GRANTS), name


def assert_no_secret_logged(run_dir: Path, up_output: str, secrets: dict[str, str]) -> None:
    """Every log of the run, and what `heater up` printed: no secret, and no JWT at all (the services' own either)."""
    logs = {path: path.read_text(errors="replace") for path in run_dir.rglob("*")
            if path.is_file() and (path.suffix == ".log" or "logs" in path.relative_to(run_dir).parts)}
    logs[Path("heater up (stdout)")] = up_output
    assert len(logs) > len(SERVICES), sorted(map(str, logs))
    found = [f"{what} in {path}" for path, text in logs.items() for what, secret in secrets.items() if secret in text]
    found += [f"a JWT in {path}" for path, text in logs.items() if JWT_SHAPE.search(text)]
    assert not found, found
