"""Which curation the pruner calibrates on."""

from __future__ import annotations

from collections.abc import Callable

from finescope_core.config import RunConfig
from finescope_core.curation import calibration_text
from finescope_core.formats import CURATED_FILE, DOCS_FILE

REFS = {"pool": {"uri": "pool", "info": {"n_docs": 1000}}, "curated": {"uri": "curated"}, "seeds": {"uri": "seeds"},
        "vectors": {"pool_emb": {"uri": "emb"}}, "corpus": {"eval_sets": {"uri": "eval"}}}


def recording_selection() -> tuple[list, Callable]:
    """A stand-in for the selection stage that records each call's arguments and names its result by call count."""
    calls = []

    def select(root, pool, seeds, vectors, eval_sets, cfg):
        calls.append((root, pool, seeds, vectors, eval_sets, cfg))
        return {"uri": f"selected-{len(calls)}"}

    return calls, select


def test_pruning_calibrates_on_the_selection_before_its_graph_re_ranking():
    """curated_first_pass selects again, from the same vectors, with the re-ranking off and every other setting as
    the curation's; where the selection does not re-rank and reaches no further, the curated set is that selection
    and is reused."""
    calls, select = recording_selection()
    config = RunConfig.model_validate({"output": "run", "select": {"budget": 7, "manifold_alpha": 0.5},
                                       "prune": {"calibration_breadth": 1}})
    assert config.prune.calibration == "curated_first_pass" and config.select.reranks
    assert calibration_text(config, REFS, select) == ({"uri": "selected-1"}, CURATED_FILE)
    (root, pool, seeds, vectors, eval_sets, cfg), = calls
    assert (root, pool, seeds, vectors, eval_sets) == ("run", REFS["pool"], REFS["seeds"], REFS["vectors"],
                                                       REFS["corpus"]["eval_sets"])
    assert not cfg.reranks and cfg.model_dump() == {**config.select.model_dump(), "manifold_alpha": 0.0}

    for prune, select_settings in (({"calibration": "curated"}, {}), ({}, {"manifold_alpha": 0}),
                                   ({}, {"method": "minilm"})):
        other = RunConfig.model_validate({"output": "run", "prune": {**prune, "calibration_breadth": 1},
                                          "select": select_settings})
        assert calibration_text(other, REFS, select) == (REFS["curated"], CURATED_FILE)
    generic = RunConfig.model_validate({"output": "run", "prune": {"calibration": "generic"}})
    assert calibration_text(generic, REFS, select) == (REFS["pool"], DOCS_FILE)
    assert len(calls) == 1


def test_a_broader_calibration_selects_again_at_that_multiple_of_the_budget_within_the_pool():
    """calibration_breadth reaches further down the same ranking: the selection the calibration would use, made
    again at the wider budget (first pass or curated set alike), never more than the pool holds."""
    calls, select = recording_selection()
    for calibration, alpha, budget, wider in (("curated_first_pass", 0.0, 7, 21), ("curated", 0.5, 7, 21),
                                              ("curated", 0.5, 400, 1000)):
        config = RunConfig.model_validate({"output": "run", "select": {"budget": budget, "manifold_alpha": 0.5},
                                           "prune": {"calibration": calibration, "calibration_breadth": 3}})
        assert calibration_text(config, REFS, select) == ({"uri": f"selected-{len(calls)}"}, CURATED_FILE)
        assert calls[-1][-1].model_dump() == {**config.select.model_dump(), "budget": wider, "manifold_alpha": alpha}
    everything = RunConfig.model_validate({"output": "run", "select": {"budget": 1000, "manifold_alpha": 0}})
    assert calibration_text(everything, REFS, select) == (REFS["curated"], CURATED_FILE)
