"""Progress off a terminal: plain, sparse lines rather than a redrawn bar."""

from hgad.progress import _lines, bar


def test_bar_off_a_terminal_prints_a_final_line(capsys):
    assert list(bar(range(7), desc="features")) == list(range(7))
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("features: 7/7 (100%)")
    assert "\r" not in err  # no redrawn bar in a log


def test_lines_report_each_tenth_when_allowed(capsys):
    list(_lines(range(50), total=50, desc="calibrate", min_s=0.0))
    lines = capsys.readouterr().err.strip().splitlines()
    assert [ln.split(",")[0] for ln in lines] == [f"calibrate: {5 * k}/50 ({10 * k}%)" for k in range(1, 11)]
