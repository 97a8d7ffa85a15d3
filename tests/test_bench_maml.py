"""``metagrad bench maml``: the compiled MAML meta-step is measured and written as JSON."""

import json

from metagrad.cli import main


def test_bench_maml_tiny_writes_memory_time_and_cpu_use(tmp_path, capsys):
    path = tmp_path / "maml.json"
    argv = ["bench", "maml", "--modes", "mixflow", "--ways", "2", "--queries", "2",
            "--steps", "1", "--meta-batch", "2", "--channels", "4", "--repeats", "1",
            "--json", str(path)]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads(path.read_text())["results"]
    assert [r["mode"] for r in rows] == ["mixflow"]
    for r in rows:
        assert r["temp_mib"] > 0 and r["gflops"] > 0 and r["median_s"] > 0
        assert len(r["times_s"]) == len(r["cpu_times_s"]) == 1 and r["cores_used"] > 0
        assert "output" not in r
    assert "MAML meta-iteration" in capsys.readouterr().out
