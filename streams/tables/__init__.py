"""Table definitions of the services, and the one kind most of them use."""

from __future__ import annotations

import faust


def json_table(app: faust.App, name: str, help: str) -> faust.Table:
    """A one-partition table of JSON objects by string key (the rules modules stay free of Faust types)."""
    return app.Table(name, key_type=str, value_type=None, partitions=1, help=help)
