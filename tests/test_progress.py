"""Progress off a terminal: plain, sparse lines rather than a redrawn bar."""

from hgad.progress import _lines, bar


def test_bar_off_a_terminal_keeps_short_work_quiet(capsys):
    assert list(bar(range(7), desc="features")) == list(range(7))
    assert capsys.readouterr().err == ""  # no redrawn bar in a log, no lines for a blink of work


def test_long_work_ends_with_a_final_line(capsys):
    list(_lines(range(7), total=7, desc="features", min_s=0.0))
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("features: 7/7 (100%)")


def test_lines_report_each_tenth_when_allowed(capsys):
    list(_lines(range(50), total=50, desc="calibrate", min_s=0.0))
    lines = capsys.readouterr().err.strip().splitlines()
    assert [ln.split(",")[0] for ln in lines] == [f"calibrate: {5 * k}/50 ({10 * k}%)" for k in range(1, 11)]
