"""Which curation the pruner calibrates on."""

from __future__ import annotations

from finescope_core.config import RunConfig
from finescope_core.curation import calibration_text
from finescope_core.formats import CURATED_FILE, DOCS_FILE

REFS = {"pool": {"uri": "pool"}, "curated": {"uri": "curated"}, "seeds": {"uri": "seeds"},
        "vectors": {"pool_emb": {"uri": "emb"}}, "corpus": {"eval_sets": {"uri": "eval"}}}


def test_pruning_calibrates_on_the_selection_before_its_graph_re_ranking():
    """curated_first_pass selects again, from the same vectors, with the re-ranking off and every other setting as
    the curation's; where the selection does not re-rank, the curated set is that selection and is reused."""
    selections = []

    def select(root, pool, seeds, vectors, eval_sets, cfg):
        selections.append((root, pool, seeds, vectors, eval_sets, cfg))
        return {"uri": "first-pass"}

    config = RunConfig.model_validate({"output": "run", "select": {"budget": 7, "manifold_alpha": 0.5}})
    assert config.prune.calibration == "curated_first_pass" and config.select.reranks
    assert calibration_text(config, REFS, select) == ({"uri": "first-pass"}, CURATED_FILE)
    (root, pool, seeds, vectors, eval_sets, cfg), = selections
    assert (root, pool, seeds, vectors, eval_sets) == ("run", REFS["pool"], REFS["seeds"], REFS["vectors"],
                                                       REFS["corpus"]["eval_sets"])
    assert not cfg.reranks and cfg.model_dump() == {**config.select.model_dump(), "manifold_alpha": 0.0}

    for prune, select_settings in (({"calibration": "curated"}, {}), ({}, {"manifold_alpha": 0}),
                                   ({}, {"method": "minilm"})):
        other = RunConfig.model_validate({"output": "run", "prune": prune, "select": select_settings})
        assert calibration_text(other, REFS, select) == (REFS["curated"], CURATED_FILE)
    generic = RunConfig.model_validate({"output": "run", "prune": {"calibration": "generic"}})
    assert calibration_text(generic, REFS, select) == (REFS["pool"], DOCS_FILE)
    assert len(selections) == 1
