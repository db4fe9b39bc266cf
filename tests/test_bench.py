"""`python -m deltaedit bench`: the table, and its text part on a random ViT-B-32 (official shapes)."""

from __future__ import annotations

import pytest

from deltaedit import cli
from deltaedit.bench import Row, format_table


def table_rows(text: str) -> dict[str, list[str]]:
    """Measurement name -> cells of a `format_table` table."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| measurement"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_format_table_shows_values_targets_and_verdicts():
    table = format_table(
        [
            Row("fast thing", 0.25, 1.0, target="<= 45% of naive", ok=True, note="25% of naive"),
            Row("slow thing", 2.0, 1.0, ok=False),
            Row("memory", 1.5, None, unit="GB"),
            Row("skipped part", None, note="skipped: no GPU"),
        ]
    )
    rows = table_rows(table)
    assert list(rows) == ["fast thing", "slow thing", "memory", "skipped part"]
    ours, naive, unit, target, ok, note = rows["fast thing"]
    assert float(ours) == 0.25 and float(naive) == 1.0 and unit == "s"
    assert target == "<= 45% of naive" and ok == "yes" and note == "25% of naive"
    assert rows["slow thing"][4] == "NO"
    assert rows["memory"][1] == "-" and rows["memory"][2] == "GB" and rows["memory"][4] == ""
    assert rows["skipped part"][0] == "-" and "no GPU" in rows["skipped part"][5]


def test_bench_only_text_prints_the_phrase_embedding_row(capsys):
    """Random ViT-B-32 at the official shapes: fast text path vs full-context encode_text."""
    assert cli.main(["bench", "--only", "text"]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    name = next((n for n in rows if n.startswith("embed a new phrase")), None)
    assert name is not None, out
    ours, naive, unit, target, ok, note = rows[name]
    assert unit == "s" and 0 < float(ours) and 0 < float(naive)
    assert ok in ("yes", "NO") and "max diff" in note
    # Same embedding on both paths: the reported max difference is float noise.
    assert float(note.split("max diff")[1].strip()) <= 1e-5
    assert not any(n.startswith("one edit") for n in rows)  # only the text part ran
    assert "process peak RSS" in rows


@pytest.mark.slow
def test_bench_gan_part_reports_edit_and_re_edit_rows(capsys):
    """Full-size random FFHQ editor on CPU: several 1024 px decodes (minutes)."""
    assert cli.main(["bench", "--only", "gan"]) == 0
    rows = table_rows(capsys.readouterr().out)
    edit = next(n for n in rows if n.startswith("one edit"))
    assert float(rows[edit][0]) > 0 and float(rows[edit][1]) > 0
    assert float(rows["re-edit, other strength/threshold"][0]) < float(rows[edit][1])


def test_times_are_medians_and_the_stage_breakdown_names_every_stage(monkeypatch):
    from types import SimpleNamespace

    from deltaedit import bench

    ticks = iter([0.0, 1.0, 1.0, 1.5, 1.5, 9.5])  # calls of 1.0, 0.5 and 8.0 s
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(ticks))
    assert bench._time(lambda: None, repeat=3) == 1.0  # the median, not the best or the mean
    runs = [
        SimpleNamespace(timings={"text": 0.001 * k, "mapper": 0.002, "decode": 0.01, "transfer": 0.003,
                                 "pil": 0.004, "total": 0.02 + 0.001 * k})
        for k in (1, 2, 9)
    ]
    total, parts = bench.stage_breakdown(runs)
    assert total == pytest.approx(0.022)
    assert parts == "text 2.0 · mapper 2.0 · decode 10.0 · transfer 3.0 · pil 4.0 ms"


@pytest.mark.gpu
def test_bench_gan_on_a_gpu_prints_medians_and_the_stage_row(capsys):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    assert cli.main(["bench", "--device", "cuda", "--only", "gan"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert any(n.startswith("GPU: one edit, warm (median of") for n in rows)
    stage = rows["GPU: one edit by stage (synced)"]
    assert all(k in stage[5] for k in ("text", "mapper", "decode", "transfer", "pil"))
