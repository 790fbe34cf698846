"""The sweep's choice: shares of the base's score, the Pareto front, the smallest model that keeps enough."""

import pytest

from finescope_core.sweep import choose, pareto_front, sweep_rows


def result(params: int, bpb: float, acc: float) -> dict:
    return {"params": params, "domains": {"med": {"bpb": bpb, "bpb_ci": [bpb - 0.01, bpb + 0.01], "acc": acc,
                                                   "acc_ci": [acc - 0.05, acc + 0.05]}}}


RESULTS = {"base": result(100, 1.0, 0.50), "r10": result(90, 1.05, 0.49), "r20": result(80, 1.20, 0.47),
           "r30": result(70, 1.25, 0.30), "worse": result(85, 1.30, 0.40)}
RATIOS = {"r10": 0.1, "r20": 0.2, "r30": 0.3, "worse": 0.15}


def test_shares_follow_the_metric_direction():
    by_bpb = {r["model"]: r for r in sweep_rows(RESULTS, RATIOS, "med", "bpb")}
    by_acc = {r["model"]: r for r in sweep_rows(RESULTS, RATIOS, "med", "acc")}
    assert by_bpb["r20"]["share"] == pytest.approx(1 / 1.2) and by_acc["r20"]["share"] == pytest.approx(0.94)
    assert [r["model"] for r in sweep_rows(RESULTS, RATIOS, "med", "bpb")] == ["base", "r30", "r20", "worse", "r10"]


def test_the_front_drops_dominated_models_and_the_choice_is_the_smallest_that_keeps_enough():
    rows = sweep_rows(RESULTS, RATIOS, "med", "bpb")
    assert sorted(pareto_front(rows)) == ["base", "r10", "r20", "r30"]  # "worse" is beaten by r20: smaller, better
    assert choose(rows, 0.9)["model"] == "r10"
    assert choose(rows, 0.8)["model"] == "r30"
    assert choose(sweep_rows(RESULTS, RATIOS, "med", "acc"), 0.9)["model"] == "r20"
    assert choose(rows, 1.0)["model"] == "base"


def test_a_domain_without_the_metric_s_eval_set_is_refused_naming_the_setting():
    without_docs = {label: {"params": r["params"], "domains": {"med": {**r["domains"]["med"], "bpb": None,
                                                                        "bpb_ci": None}}}
                    for label, r in RESULTS.items()}
    with pytest.raises(ValueError, match=r"sweep\.metric='bpb': the eval sets of 'med' have no held-out documents"):
        sweep_rows(without_docs, RATIOS, "med", "bpb")
    assert [row["bpb"] for row in sweep_rows(without_docs, RATIOS, "med", "acc")] == [None] * len(RESULTS)
