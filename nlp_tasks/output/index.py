"""The markers' index: every committed unit's marker as of a run's end, with the size and version its marker file
had in the listing then, in one object (`__manifest/units.json.gz`, written atomically).

Marker files stay the commit point and the truth; the index only saves reading them. Opening an output lists
the markers' folder (listing pages: a thousand files a request on object storage) and reads the index; a marker
is read from its file only where its listing entry differs from the index's (committed or repaired since), or
the index lacks it. A missing, torn or stale index costs reads, never output.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

from nlp_tasks.files import version_of
from nlp_tasks.output.storage import write_atomic

FORMAT = 1


def file_key(entry: dict) -> list:
    """What the index records of a marker file's listing entry: its size and version (mtime, ETag)."""
    return [int(entry.get("size") or 0), version_of(entry)]


def read_index(filesystem: Any, path: str) -> dict[str, dict]:
    """The index's entries by unit (`{"file": [size, version], "marker": {...}}`); empty where there is none or it
    cannot be read (then every marker is read from its file)."""
    try:
        data = json.loads(gzip.decompress(filesystem.cat_file(path)))
    except (FileNotFoundError, OSError, EOFError, ValueError):
        return {}
    units = data.get("units") if isinstance(data, dict) and data.get("format") == FORMAT else None
    if not isinstance(units, dict):
        return {}
    return {unit: entry for unit, entry in units.items()
            if isinstance(entry, dict) and isinstance(entry.get("file"), list) and isinstance(entry.get("marker"), dict)}


def write_index(filesystem: Any, path: str, markers: dict[str, dict], listing: dict[str, dict]) -> None:
    """Record `markers` (the committed units, as the store holds them) with their files' listing entries; a unit
    whose marker file the listing lacks is left out (it is read again next time)."""
    units = {unit: {"file": file_key(listing[unit]), "marker": marker}
             for unit, marker in markers.items() if unit in listing}
    payload = json.dumps({"format": FORMAT, "units": units}, separators=(",", ":"), sort_keys=True).encode()
    write_atomic(filesystem, path, gzip.compress(payload, compresslevel=5))
