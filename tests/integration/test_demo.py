"""`make demo`'s table: teacher, CE-only and KD students, with where their runs are."""

from pathlib import Path

from divlab.cli import demo


def test_mean_std_in_percent():
    assert demo.mean_std([0.9, 1.0]) == "95.00 ± 7.07"
    assert demo.mean_std([0.5]) == "50.00 ± 0.00"
    assert demo.mean_std([]) == "-"


def test_demo_prints_the_three_rows(base_overrides, capsys):
    rows = demo.main(["seeds=0,1", "debug=fast", *base_overrides])
    out = capsys.readouterr().out
    assert [r["name"].split(" (")[0] for r in rows] == ["teacher", "CE-only student", "KD student"]
    assert len(rows[0]["accs"]) == 1 and len(rows[1]["accs"]) == 2 and len(rows[2]["accs"]) == 2
    for row in rows:
        assert all(0.0 <= a <= 1.0 for a in row["accs"])
        assert Path(row["where"]).exists()
        assert row["name"] in out and demo.mean_std(row["accs"]) in out
    assert "KD - CE-only:" in out
