"""Task registry: adapters register by name (and aliases); config and actors look them up."""

from __future__ import annotations

from nlp_tasks.tasks.base import TaskAdapter

TASKS: dict[str, type[TaskAdapter]] = {}


def register(adapter: type[TaskAdapter]) -> type[TaskAdapter]:
    """Class decorator: make an adapter available under its name and aliases."""
    for key in (adapter.name, *adapter.aliases):
        if key in TASKS:
            raise ValueError(f"task name {key!r} registered twice")
        TASKS[key] = adapter
    return adapter


def get_task(name: str) -> type[TaskAdapter]:
    try:
        return TASKS[name]
    except KeyError:
        known = ", ".join(sorted(TASKS))
        raise ValueError(f"unknown task {name!r}; known tasks: {known}") from None
