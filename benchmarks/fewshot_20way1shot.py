"""Reproduces the 20-way 1-shot figures of ``docs/fewshot.md`` (a short run) on the glyph benchmark.

``metagrad fewshot train``: conv4 (64 ch), second-order MAML (mixed mode), 20-way 1-shot, 1 inner
step of lr 0.4 in training and 3 at test, 2 query examples per class in training, meta-batch 4
(the same images per meta-step as the 5-way run: 4 x (20 + 40) = 8 x (5 + 25)), Adam 1e-3,
1,500 meta-steps (about 30 minutes on 2 CPU cores); then ``metagrad fewshot eval`` on 600 test
tasks with 15 queries per class. Resumes from its checkpoint if interrupted. Writes ``results/fewshot/glyphs_20w1s/`` and copies
the training curve to ``docs/images/fewshot_train_20w1s.png``.

    python benchmarks/fewshot_20way1shot.py
"""

import shutil
import sys

from metagrad.cli import main

RUN = "results/fewshot/glyphs_20w1s"
ITERATIONS = "1500"
TRAIN = [
    "fewshot", "train", "--dataset", "glyphs", "--ways", "20", "--shots", "1", "--queries", "2",
    "--steps", "1", "--test-steps", "3", "--inner-lr", "0.4", "--outer-lr", "1e-3",
    "--meta-batch", "4", "--iterations", ITERATIONS, "--val-every", "200", "--val-tasks", "100",
    "--checkpoint-every", "50", "--seed", "0", "--out", RUN,
]  # fmt: skip


def run(argv: list[str]) -> None:
    code = main(argv)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    run(TRAIN)
    shutil.copy(f"{RUN}/curve.png", "docs/images/fewshot_train_20w1s.png")
    run(["fewshot", "eval", "--out", RUN, "--tasks", "600", "--queries", "15",
         "--json", f"{RUN}/eval_test_q15_K3.json"])  # fmt: skip
