"""What the Lua scripts and the entry hash mean by their sentinel values, defined once.

The scripts (``store/scripts/*.lua``) and every reader and writer of the keys agree on these;
docs/storage-format.md describes them for programs in other languages.
"""

from __future__ import annotations

from ..model.entry import NEVER

__all__ = ["MISSING", "NEVER", "PARK", "RETIRED"]

# NEVER: the ZSET score of an entry with no next run, RedBeat's own (model/entry.py).
#: ``run_now`` of a claim operation that parks a malformed entry (``claim.lua``).
PARK = "-"
#: What a script answers (and is given) for "no such value": a missing hash, no version.
MISSING = "-"
#: What the lease key of a shard that ``reshard`` moved away from holds (then the new
#: shard count); scripts writing there answer ``RETIRED``.
RETIRED = "retired "
