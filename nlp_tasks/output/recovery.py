"""Recovery when an output opens: roll interrupted commits forward, uncommit what is not as committed, delete strays.

Each run starts by checking what the markers say against the output as it is: a marker that is
not the shape of one, or a part that is missing, of another size, unreadable or not the part
committed, uncommits its unit, which is then redone whole and reported under `repaired`. The
check costs one listing of the output folder; a part's footer is read only where its listing
entry (modification time or ETag) differs from the one the markers' index recorded (index.py: at
the end of the run that committed it, or when it was last verified).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from nlp_tasks.files import FOOTER_READERS, read_footer, version_of
from nlp_tasks.output.index import file_key, read_index
from nlp_tasks.output.layout import INDEX, PART_NAME, STAGING, UNITS, marker_problem
from nlp_tasks.output.storage import TornFile, parse_json
from nlp_tasks.secrets import redact


class OutputStore(Protocol):
    """What recovery needs of the store it checks (store.py's OutputStore)."""

    filesystem: Any
    root: str
    staging: str
    markers: dict[str, dict]
    index_stale: bool

    def path(self, *parts: str) -> str: ...

    def delete(self, path: str) -> None: ...

    def redo(self, unit: str, why: str) -> None: ...

    def remove(self, unit: str) -> None: ...


def list_markers(store: OutputStore) -> dict[str, dict]:
    """The markers' files by unit, with their listing entries (size, version): one listing."""
    folder = store.path(UNITS)
    store.filesystem.invalidate_cache(folder)
    if not store.filesystem.exists(folder):
        return {}
    return {entry["name"].rsplit("/", 1)[-1].removesuffix(".json"): entry
            for entry in store.filesystem.ls(folder, detail=True) if entry["name"].endswith(".json")}


def read_markers(store: OutputStore, problem_of=marker_problem) -> dict[str, dict]:
    """The units' markers: from the index where a marker file's listing entry is the one it recorded, else from
    the file (index.py). A marker that is torn, or JSON of another shape (`problem_of(unit, marker)`), is deleted
    and its unit redone."""
    listing = list_markers(store)
    indexed = read_index(store.filesystem, store.path(INDEX))
    markers, paths = {}, []
    for unit, entry in listing.items():
        known = indexed.get(unit)
        if known is not None and known["file"] == file_key(entry) and not problem_of(unit, known["marker"]):
            markers[unit] = known["marker"]
        else:
            paths.append(entry["name"])
    store.index_stale = bool(paths) or len(markers) != len(indexed)
    for path, raw in store.filesystem.cat(paths, on_error="return").items() if paths else []:
        unit = path.rsplit("/", 1)[-1].removesuffix(".json")
        try:
            if isinstance(raw, Exception):
                raise raw
            marker = parse_json(path, raw)
            if problem := problem_of(unit, marker):
                raise TornFile(f"{path} is not a unit marker ({problem})")
            markers[unit] = marker
        except (TornFile, OSError) as error:
            store.redo(unit, f"unit marker unreadable: {redact(str(error))}")
            store.delete(path)
    return markers


def reconcile(store: OutputStore) -> None:
    """Roll interrupted commits forward, uncommit units whose parts are not what their marker says, and
    delete what no marker lists."""
    store.markers = read_markers(store)
    listing = list_output(store)
    staged = set(store.filesystem.find(store.path(STAGING))) if STAGING in listing else set()
    for marker in store.markers.values():
        for part in marker["parts"]:
            if part.get("staged") and store.path(part["staged"]) in staged:  # committed, not yet moved
                store.filesystem.mv(store.path(part["staged"]), store.path(part["file"]))
                listing[part["file"]] = store.filesystem.info(store.path(part["file"]))
    problems, upgraded = verify_parts(store, listing)
    for unit, problem in problems.items():
        store.redo(unit, f"input file {store.markers[unit]['source']!r}: committed part {problem}")
        store.remove(unit)
    if upgraded - set(problems):
        store.index_stale = True  # the parts' versions, verified now, are kept in the index
    listed = {part["file"] for marker in store.markers.values() for part in marker["parts"]}
    for entry in set(listing) - listed:
        if PART_NAME.match(entry):
            store.delete(store.path(entry))
    if STAGING in listing:
        store.filesystem.rm(store.path(STAGING), recursive=True)
    store.filesystem.makedirs(store.staging, exist_ok=True)

def list_output(store: OutputStore) -> dict[str, dict]:
    """The output folder's entries by name, with their sizes and versions, as storage has them now (not as a
    client's listing cache remembers them): one listing."""
    store.filesystem.invalidate_cache(store.root)
    entries = store.filesystem.ls(store.root, detail=True)
    return {entry["name"].rstrip("/").rsplit("/", 1)[-1]: entry for entry in entries}

def verify_parts(store: OutputStore, listing: dict[str, dict]) -> tuple[dict[str, str], set[str]]:
    """Each committed part against its marker: what is wrong with the first bad part of each unit, and the
    units whose markers now record their parts' versions (verified this run), for the index.

    A part is missing, or of another size than committed, from the listing alone. Its footer is read (a few
    at a time) only where the listing's version differs from the one recorded at its last verification: the
    footer's checksum and row count must be the committed ones.
    """
    problems: dict[str, str] = {}
    doubtful: list[tuple[str, dict]] = []
    for unit, marker in store.markers.items():
        for part in marker["parts"]:
            entry = listing.get(part["file"])
            if entry is None:
                problems[unit] = f"{part['file']} is missing"
            elif part.get("size") is not None and int(entry.get("size") or 0) != part["size"]:
                problems[unit] = (f"{part['file']} is {entry.get('size')} bytes, {part['size']} when committed "
                                  "(truncated or replaced)")
            if unit in problems:
                break
            if part.get("version") is None or version_of(entry) != part["version"]:
                doubtful.append((unit, part))

    def check(item: tuple[str, dict]) -> str | None:
        part = item[1]
        entry = listing[part["file"]]
        try:
            metadata, footer_sha256 = read_footer(store.filesystem, store.path(part["file"]), int(entry["size"]))
        except Exception as error:  # noqa: BLE001 - any reader failure means the part is not readable
            return f"{part['file']} is not readable Parquet ({type(error).__name__}: {redact(str(error))})"
        if part.get("footer_sha256", footer_sha256) != footer_sha256:
            return f"{part['file']} is not the part committed (its footer differs)"
        if metadata.num_rows != part["rows"]:
            return f"{part['file']} holds {metadata.num_rows} rows, {part['rows']} when committed"
        part.update(size=int(entry["size"]), footer_sha256=footer_sha256, version=version_of(entry))
        return None

    doubtful = [(unit, part) for unit, part in doubtful if unit not in problems]
    with ThreadPoolExecutor(FOOTER_READERS) as pool:
        for (unit, _), problem in zip(doubtful, pool.map(check, doubtful)):
            if problem is not None:
                problems.setdefault(unit, problem)
    return problems, {unit for unit, _ in doubtful}
