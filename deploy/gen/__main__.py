"""``python -m deploy.gen [--check]``: write the generated manifests, or fail if they are stale."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deploy.gen.render import OUT, render

DEPLOY = Path(__file__).resolve().parent.parent


def stale(files: dict[str, str]) -> list[str]:
    """Paths whose committed text differs from the rendering, or that the rendering no longer has."""
    out = [path for path, text in files.items() if not (DEPLOY / path).is_file() or (DEPLOY / path).read_text() != text]
    existing = {str(p.relative_to(DEPLOY)) for p in (DEPLOY / OUT).glob("*") if p.is_file()}
    return sorted(out + sorted(existing - set(files)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.gen", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed files differ from the code")
    args = parser.parse_args(argv)
    files = render()
    if args.check:
        differ = stale(files)
        for path in differ:
            print(f"stale: deploy/{path}", file=sys.stderr)
        return 1 if differ else 0
    (DEPLOY / OUT).mkdir(parents=True, exist_ok=True)
    for path in stale(files):
        target = DEPLOY / path
        if path in files:
            target.write_text(files[path])
        else:
            target.unlink()
        print(f"wrote deploy/{path}" if path in files else f"removed deploy/{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
