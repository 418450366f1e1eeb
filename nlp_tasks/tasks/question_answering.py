"""question-answering: extract the answer span to a fixed question, or a per-row question column.

transformers 5 removed the question-answering pipeline; this follows its scoring: start and end
probabilities normalised over context tokens only, best span with start <= end < start + max_answer_len.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import PositiveInt, model_validator

from nlp_tasks.tasks.base import ENCODER_ENGINES, RowError, TaskAdapter, TaskOptions
from nlp_tasks.tasks.registry import register
from nlp_tasks.text_checks import as_text, text_problem

ANSWER = pa.struct([("answer", pa.string()), ("score", pa.float32()), ("start", pa.int32()), ("end", pa.int32())])


class QuestionAnsweringOptions(TaskOptions):
    question: str | None = None
    question_column: str | None = None
    max_answer_len: PositiveInt = 15

    def second_input(self) -> str | None:
        return self.question_column

    @model_validator(mode="after")
    def _one_question_source(self):
        if (self.question is None) == (self.question_column is None):
            raise ValueError("set exactly one of 'question' (fixed) or 'question_column' (per row)")
        return self


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max())
    return shifted / shifted.sum()


def best_span(start_logits: np.ndarray, end_logits: np.ndarray, context: np.ndarray, max_len: int) -> tuple:
    """Token indices and probability of the best span inside the context tokens."""
    start = softmax(np.where(context, start_logits, -10000.0))
    end = softmax(np.where(context, end_logits, -10000.0))
    outer = np.tril(np.triu(np.outer(start, end)), max_len - 1)
    first, last = np.unravel_index(outer.argmax(), outer.shape)
    return int(first), int(last), float(outer[first, last])


@register
class QuestionAnswering(TaskAdapter):
    name = "question-answering"
    options_class = QuestionAnsweringOptions
    auto_class = "AutoModelForQuestionAnswering"
    engines = ENCODER_ENGINES

    def arrow_type(self) -> pa.DataType:
        return ANSWER

    def questions(self, batch: pa.Table) -> list:
        if self.options.question is not None:
            return [self.options.question] * batch.num_rows
        return batch.column(self.options.question_column).to_pylist()

    def preprocess(self, texts, batch):
        questions = self.questions(batch)
        problems = [text_problem(q, "question") for q in questions]
        clean = [i for i, problem in enumerate(problems) if problem is None]
        segments: list = [RowError(problem) if problem else None for problem in problems]
        if not clean:  # a tokenizer given no text at all raises (IndexError)
            return segments
        encoded = self.tokenizer(
            [as_text(questions[i]) for i in clean], [texts[i] for i in clean],
            truncation="only_second", max_length=self.max_length, return_offsets_mapping=True,
        )
        for position, row in enumerate(clean):
            segment = {k: encoded[k][position] for k in encoded}
            segment["context_mask"] = [sequence == 1 for sequence in encoded.sequence_ids(position)]
            segments[row] = [segment]
        return segments

    def forward(self, inputs):
        outputs = self.infer(inputs)
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        starts = outputs.start_logits.float().cpu().numpy()
        ends = outputs.end_logits.float().cpu().numpy()
        return [(s[:n], e[:n]) for s, e, n in zip(starts, ends, lengths)]

    def postprocess(self, text, segments, outputs):
        segment, (start_logits, end_logits) = segments[0], outputs[0]
        first, last, score = best_span(start_logits, end_logits, np.array(segment["context_mask"]),
                                       self.options.max_answer_len)
        start, end = segment["offset_mapping"][first][0], segment["offset_mapping"][last][1]
        return {"answer": text[start:end], "score": score, "start": start, "end": end}
