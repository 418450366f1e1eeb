"""Task adapters, one module each, registered by name in `registry.TASKS`."""

from nlp_tasks.tasks import (  # noqa: F401 - importing registers each adapter
    embedding_classification,
    feature_extraction,
    fill_mask,
    question_answering,
    seq2seq,
    text_classification,
    text_generation,
    token_classification,
    zero_shot_classification,
)
from nlp_tasks.tasks.registry import TASKS, get_task

__all__ = ["TASKS", "get_task"]
