"""The models the benchmarks run, described once: MiniLM as shipped, or a BERT-base built from config.

The BERT-base models need no network: `BertConfig()` defaults (hidden 768, 12 layers) with a task
head, seeded random weights, and MiniLM's tokenizer (BERT uncased WordPiece) with a 512 window.
An NER head's "O" bias is raised until NER_O_SHARE of the sample texts' tokens are O, as in real
NER output (a plain random head tags most tokens as entities, and grouping them would dominate).
The tiny scenarios are the same heads on a 2-layer, 32-wide BERT: smoke runs, whose figures say nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import minilm_path, random_bert

NER_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
NER_O_SHARE = 0.85
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


@dataclass(frozen=True)
class Scenario:
    name: str
    task: str
    """The job's task, also the `pipeline()` task."""
    max_length: int
    auto_class: str
    """The transformers class the ceiling loads."""
    job_options: dict = field(default_factory=dict)
    pipeline_kwargs: dict = field(default_factory=dict)
    head: str | None = None
    """None: the MiniLM checkpoint; else a BERT-base of this class with random weights."""
    labels: tuple[str, ...] = ()
    sizes: dict = field(default_factory=dict)
    """BertConfig overrides of BERT-base's sizes (the tiny scenarios)."""

    def job_task(self, model: Path) -> dict:
        return {"task": self.task, "model": str(model), "max_length": self.max_length, **self.job_options}


SCENARIOS = {scenario.name: scenario for scenario in (
    Scenario("minilm", "feature-extraction", 256, "AutoModel", job_options={"normalize": True}),
    Scenario("bert-base-classifier", "text-classification", 512, "AutoModelForSequenceClassification",
             head="BertForSequenceClassification", labels=("negative", "neutral", "positive")),
    Scenario("bert-base-ner", "token-classification", 512, "AutoModelForTokenClassification",
             job_options={"aggregation_strategy": "simple"}, pipeline_kwargs={"aggregation_strategy": "simple"},
             head="BertForTokenClassification", labels=NER_LABELS),
    Scenario("tiny-classifier", "text-classification", 128, "AutoModelForSequenceClassification",
             head="BertForSequenceClassification", labels=("negative", "neutral", "positive"), sizes=TINY),
    Scenario("tiny-ner", "token-classification", 128, "AutoModelForTokenClassification",
             job_options={"aggregation_strategy": "simple"}, pipeline_kwargs={"aggregation_strategy": "simple"},
             head="BertForTokenClassification", labels=NER_LABELS, sizes=TINY),
)}


def checkpoint(scenario: Scenario, workdir: Path, sample_texts: list[str]) -> Path:
    """The checkpoint directory every variant loads (built under `workdir` for the BERT-base scenarios)."""
    if scenario.head is None:
        return Path(minilm_path())
    target = random_bert(workdir / scenario.name, scenario.head, scenario.labels, **scenario.sizes)
    if "O" in scenario.labels:
        _raise_o_bias(target, sample_texts, scenario.labels.index("O"))
    return target


def _raise_o_bias(target: Path, texts: list[str], o: int) -> None:
    import torch
    import transformers

    model = transformers.AutoModelForTokenClassification.from_pretrained(target).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(target)
    inputs = tokenizer(texts, truncation=True, max_length=128, padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**inputs).logits[inputs["attention_mask"].bool()]
    margin = torch.cat([logits[:, :o], logits[:, o + 1:]], dim=1).max(dim=1).values - logits[:, o]
    with torch.no_grad():
        model.classifier.bias[o] += float(torch.quantile(margin, NER_O_SHARE))
    model.save_pretrained(target)
