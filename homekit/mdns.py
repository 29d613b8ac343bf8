"""The bridge's mDNS advertiser: none, loopback only, or every interface (the Pi on its LAN).

Development machines never send multicast off the machine: the default advertises
nothing, and a controller connects to the known address and port.
"""

from __future__ import annotations

from typing import Any


class NoAdvertiser:
    """Stands in for HAP-python's AsyncZeroconf: registers nothing, sends nothing."""

    async def async_register_service(self, info: Any, **kwargs: Any) -> None:
        """Nothing is announced."""

    async def async_update_service(self, info: Any) -> None:
        """Nothing is announced."""

    async def async_unregister_service(self, info: Any) -> None:
        """Nothing was announced."""

    async def async_close(self) -> None:
        """Nothing to close."""


def advertiser(mode: str) -> Any:
    """The advertiser for ``mode`` (``off``, ``loopback``, ``all``); None lets HAP-python pick every interface."""
    if mode == "off":
        return NoAdvertiser()
    if mode == "loopback":
        from zeroconf.asyncio import AsyncZeroconf

        return AsyncZeroconf(interfaces=["127.0.0.1"])
    return None
