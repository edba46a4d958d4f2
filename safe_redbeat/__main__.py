"""``python -m safe_redbeat``: the same as the ``safe-redbeat`` command."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
