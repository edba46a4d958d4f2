"""Print pip constraints pinning each runtime dependency and the ``django`` extra of
pyproject.toml to its declared floor (``name>=X`` becomes ``name==X``).

``python .ci/lower_bounds.py`` (any Python 3; no TOML parser needed). Exits 1 if a
dependency has no ``>=`` floor: the lower-bound job could not test it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
REQUIREMENT = re.compile(r'"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*>=\s*([0-9][^",;\s]*)[^"]*"')


def block(text: str, start: str) -> str:
    """The text of the TOML array that opens at the line ``start``."""
    match = re.search(rf"^{re.escape(start)}\s*=\s*\[(.*?)\]\s*$", text, re.M | re.S)
    if match is None:
        raise SystemExit(f"{PYPROJECT}: no '{start} = [...]'")
    return match.group(1)


def main() -> int:
    text = PYPROJECT.read_text()
    lines = []
    for name in ("dependencies", "django"):
        entries = [e for e in re.findall(r'"[^"]+"', block(text, name))]
        for entry in entries:
            match = REQUIREMENT.fullmatch(entry)
            if match is None:
                print(f"{entry} has no '>=' floor", file=sys.stderr)
                return 1
            lines.append(f"{match.group(1)}=={match.group(2)}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
