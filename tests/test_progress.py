"""Progress reports: a loop of known length tells the installed reporter where it is, and only then."""

from finescope_core import progress


def test_a_loop_of_known_length_reports_its_start_and_end_and_one_of_unknown_length_nothing():
    reports = []
    progress.report_to(lambda desc, done, total: reports.append((desc, done, total)))
    try:
        assert list(progress.progress(["a", "b", "c"], "letters")) == ["a", "b", "c"]
        assert list(progress.progress(iter(range(4)), "numbers")) == [0, 1, 2, 3]  # no length: no reports
        assert list(progress.progress(iter(range(2)), "counted", total=2)) == [0, 1]
    finally:
        progress.report_to(None)
    assert reports == [("letters", 0, 3), ("letters", 3, 3), ("counted", 0, 2), ("counted", 2, 2)]
    assert list(progress.progress([1], "unreported")) == [1] and len(reports) == 4
