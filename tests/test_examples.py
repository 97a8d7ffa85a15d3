"""The examples a newcomer copies from must run and do what they say."""

import runpy
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_quickstart_learns_to_down_weight_corrupted_examples(capsys):
    runpy.run_path(str(EXAMPLES / "quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    last = next(line for line in out.splitlines() if line.startswith("mean weight:"))
    corrupted, clean = (float(part.split()[-1]) for part in last.split(":", 1)[1].split(","))
    assert corrupted < clean
    # The example ends with metagrad.check: the meta-gradient it trained with is trustworthy.
    assert "verdict: sound" in out
