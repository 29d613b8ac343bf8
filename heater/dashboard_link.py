"""`heater dashboard`: a one-time link that opens the status page in a browser, as the saved login.

A browser sends no bearer token, so the page is opened through a ticket (:mod:`streams.auth`,
*Browsers*): with the saved token (`heater login`, any role), AlarmsServer is asked for a
link that is valid once, for a minute; opening it gives the browser a viewer session cookie
(HttpOnly, SameSite=Strict, on ``/dashboard`` only) that ends with the token. The token itself
never leaves this process: the link carries only the ticket.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from heater import credentials
from heater.rundir import Layout
from streams.auth import Role
from streams.dashboard import LINK_PATH
from streams.tls import client_context_for


class NoLink(Exception):
    """AlarmsServer gave no link; the message says why."""


def link(run_dir: Path, timeout: float = 5.0) -> str:
    """A one-time URL of the status page on the platform of ``run_dir``, asked for with the saved login."""
    token = credentials.bearer(run_dir, Role.VIEWER)
    base = Layout.load(run_dir).web_url("alarms")
    request = urllib.request.Request(base + LINK_PATH, data=b"{}", method="POST",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=client_context_for(base)) as response:
            return base + json.loads(response.read())["path"]
    except urllib.error.HTTPError as refused:
        try:
            reason = json.loads(refused.read()).get("error", "")
        except ValueError:
            reason = ""
        raise NoLink(f"AlarmsServer refused a link ({refused.code}): {reason}") from None
    except OSError as exc:
        raise NoLink(f"AlarmsServer does not answer at {base}: {exc}") from None


def main(run_dir: Path) -> int:
    """Print the link; exit 1 without a login, or when AlarmsServer does not give one."""
    try:
        url = link(run_dir)
    except (credentials.NotLoggedIn, NoLink, FileNotFoundError) as exc:
        print(f"no dashboard link: {exc}")
        return 1
    print("open this link in your browser within a minute (it works once):")
    print(url)
    return 0
