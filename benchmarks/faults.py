"""Bad input and faults, tried as a demanding new user would: does metagrad say what is wrong?

Runs a few hundred cases through the ``metagrad`` command line (in this process, like the console
script) and the library, and sorts each outcome into:

* ``clear error``: a non-zero exit whose message names what was wrong (the flag, the file);
* ``correct``: the command did what the user meant (e.g. resumed, kept the earlier files);
* ``traceback``: an exception escaped the command (the user sees a Python traceback);
* ``unclear error``: a non-zero exit whose message does not name what was wrong;
* ``late error``: a clear error for a bad flag that came only after the work (over 30 s);
* ``silent wrong result``: exit 0 where the input was wrong, or a check of the result failed;
* ``data lost``: a file of an earlier run was deleted or changed.

The cases follow the classes of the fault issue: (1) non-finite values, (2) history, (3) damaged
files, (4) ordinary mistakes, (5) checks before work, (6) silent reinterpretation. Every numeric
flag of every command is tried with values it must refuse (found from the parser, so a new flag
is covered without editing this file).

Usage::

    python benchmarks/faults.py [--json docs/results/faults_cpu.json] [--quick]

Writes a table of counts per class and outcome, and the JSON of every case.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metagrad.cli import arguments, build_parser, main

OUTCOMES = (
    "clear error",
    "correct",
    "traceback",
    "unclear error",
    "late error",
    "silent wrong result",
    "data lost",
)
LATE_S = 30.0  # an error of a bad flag that comes later than this came after real work
GOOD = ("clear error", "correct")

# Values each kind of numeric flag must refuse.
BAD_VALUES: dict[Callable[[str], Any], tuple[str, ...]] = {
    arguments.positive_int: ("0", "-2", "1.5", "nan", "abc"),
    arguments.non_negative_int: ("-1", "2.5", "abc"),
    arguments.positive_number: ("0", "-1", "nan", "inf", "1e400", "abc"),
    arguments.non_negative_number: ("-1", "nan", "inf", "abc"),
    arguments.fraction: ("0", "1", "1.5", "nan"),
    arguments.momentum: ("-0.1", "1", "1.5", "nan", "abc"),
}

# Tiny settings of a real few-shot run on the built-in glyphs (seconds, not minutes).
TINY_FEWSHOT = ["--channels", "4", "--meta-batch", "1", "--queries", "1", "--steps", "1",
                "--iterations", "4", "--checkpoint-every", "2", "--val-every", "0"]  # fmt: skip


def run_cli(argv: list[str]) -> dict[str, Any]:
    """``metagrad argv`` in this process: exit status, what it printed, an escaped exception."""
    out, err = io.StringIO(), io.StringIO()
    escaped = None
    code: Any = 0
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
            if isinstance(code, str):  # SystemExit("message"): printed by the interpreter
                err.write(code + "\n")
                code = 1
        except BaseException:  # noqa: BLE001 - this is what the harness looks for
            escaped = traceback.format_exc()
            code = None
    said = err.getvalue() + "\n".join(str(w.message) for w in caught)
    return {"code": code, "stdout": out.getvalue(), "said": said, "escaped": escaped}


def expect_error(
    argv: list[str], *mentions: str, runs: bool = False
) -> Callable[[], tuple[str, str]]:
    """A case that must exit non-zero with a message mentioning every string in ``mentions``
    (``runs``: the error can only show while running, e.g. a diverging step: never late)."""

    def case() -> tuple[str, str]:
        t0 = time.perf_counter()
        r = run_cli(argv)
        late = not runs and time.perf_counter() - t0 > LATE_S
        if r["escaped"] or "Traceback" in r["said"]:
            return "traceback", (r["escaped"] or r["said"]).strip().splitlines()[-1]
        if r["code"] in (0, None):
            return "silent wrong result", "exit 0"
        last = _last_error_line(r["said"])
        if all(m.lower() in r["said"].lower() for m in mentions):
            return ("late error" if late else "clear error"), last
        return "unclear error", last

    return case


def _last_error_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip() and not x.startswith("usage")]
    errors = [x for x in lines if "error" in x.lower() or ":" in x]
    return (errors or lines or [""])[-1][:240]


def numeric_flag_cases() -> list[tuple[str, str, Callable[[], tuple[str, str]]]]:
    """Every numeric flag of every command with every value its type must refuse."""
    cases = []
    for command, parser in _leaf_parsers(build_parser()):
        for action in parser._actions:
            bad = BAD_VALUES.get(action.type)  # type: ignore[arg-type]
            if not bad or not action.option_strings:
                continue
            flag = action.option_strings[0]
            for value in bad:
                argv = [*command, f"{flag}={value}"]
                if "--out" in _required(parser):
                    argv += ["--out", "unused-run-folder"]
                cases.append((
                    "4 ordinary mistakes" if value in ("abc", "1.5", "2.5") else "6 silent",
                    " ".join(argv),
                    expect_error(argv, flag),
                ))  # fmt: skip
    return cases


def _leaf_parsers(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _leaf_parsers(sub, (*prefix, name))
    return found or [(list(prefix), parser)]


def _required(parser: argparse.ArgumentParser) -> set[str]:
    return {a.option_strings[0] for a in parser._actions if a.required and a.option_strings}


def path_cases(tmp: Path) -> list:
    """``--out`` and ``--json`` naming a file, a folder, or an unwritable place, per command."""
    a_file = tmp / "a-file.txt"
    a_file.write_text("the user's file")
    cases = []
    for command, parser in _leaf_parsers(build_parser()):
        flags = {a.option_strings[0] for a in parser._actions if a.option_strings}
        required = ["--out", str(tmp / "run")] if "--out" in _required(parser) else []
        if "--out" in flags:
            for bad, why in ((a_file, "is a file"), (a_file / "sub", "cannot write"),
                             (Path("/proc/metagrad-run"), "cannot write")):  # fmt: skip
                argv = [*command, "--out", str(bad)]
                cases.append(
                    ("4 ordinary mistakes", " ".join(argv), expect_error(argv, "--out", why))
                )
        if "--json" in flags:
            for bad, why in ((tmp, "is a folder"), (a_file / "r.json", "cannot write")):
                argv = [*command, *required, "--json", str(bad)]
                cases.append(("4 ordinary mistakes", " ".join(argv),
                              expect_error(argv, "--json", why)))  # fmt: skip

    def file_untouched() -> tuple[str, str]:
        ok = a_file.read_text() == "the user's file"
        return ("correct", "the user's file is unchanged") if ok else ("data lost", "changed")

    cases.append(("2 history", "a file named as --out is never written", file_untouched))
    return cases


def budget_cases() -> list:
    cases = []
    for budget in ("0.5", "inf", "1e400", "nan", "-4GiB", "lots", "0GiB"):
        for argv, flag in (
            (["plan", f"--memory-budget={budget}"], "--memory-budget"),
            (["meta", "lr", "--quick", f"--memory-budget={budget}", "--out", "unused"],
             "--memory-budget"),
            (["bench", "unroll", "--quick", f"--budget={budget}"], "--budget"),
            (["bench", "unroll", "--quick", f"--max-run-memory={budget}"], "--max-run-memory"),
        ):  # fmt: skip
            cases.append(("4 ordinary mistakes", " ".join(argv), expect_error(argv, flag)))
    return cases


def list_and_pattern_cases(tmp: Path) -> list:
    out = ["--out", str(tmp / "fewshot-bad")]
    specs = [
        (["bench", "meta-grad", "--modes", "fast"], "--modes"),
        (["bench", "meta-grad", "--cases", "cnn"], "--cases"),
        (["bench", "meta-grad", "--sweep", "X=1,2"], "--sweep"),
        (["bench", "meta-grad", "--sweep", "T=0,2"], "--sweep"),
        (["bench", "meta-grad", "--sweep", "T"], "--sweep"),
        (["bench", "maml", "--patterns", "01x"], "--patterns"),
        (["bench", "scale", "--devices", "1,x"], "--devices"),
        (["bench", "unroll", "--steps", "8,x"], "--steps"),
        (["bench", "unroll", "--strategies", "fast"], "--strategies"),
        (["width", "coord-check", "--widths", "8,x"], "--widths"),
        (["width", "sweep", "--lrs", "2:1"], "--lrs"),
        (["width", "sweep", "--optimizer", "lbfgs"], "--optimizer"),
        (["check", "--case", "resnet"], "--case"),
        (["check", "--modes", "fast"], "--modes"),
        (["plan", "--case", "cnn"], "--case"),
        (["plan", "--sizes", "4,x", "--case", "mlp"], "--sizes"),
        (["fewshot", "train", "--pattern", "", *out], "--pattern"),
        (["fewshot", "train", "--pattern", "01x", *out], "--pattern"),
        (["fewshot", "train", "--pattern", "11111/11111", "--steps", "5", *out], "--pattern"),
        (["fewshot", "train", "--pattern", "11/11", "--steps", "2", *TINY_FEWSHOT[:6], *out],
         "pattern"),
        (["fewshot", "train", "--algorithm", "reptile", *out], "--algorithm"),
        (["fewshot", "train", "--mode", "forward", *out], "--mode"),
        (["fewshot", "train", "--dataset", "cifar", *out], "--dataset"),
        (["fewshot", "train", "--dataset", "omniglot", *out], "--data-root"),
        (["fewshot", "train", "--dataset", "omniglot", "--data-root", str(tmp / "none"), *out],
         "omniglot"),
        (["fewshot", "train", "--ways", "300", *TINY_FEWSHOT, *out], "--ways"),
        (["fewshot", "train", "--shots", "19", "--queries", "5", *TINY_FEWSHOT[:4], *out],
         "--shots or --queries"),
        (["fewshot", "eval", "--out", str(tmp / "no-run")], "--out"),
        (["fewshot", "select", "--out", str(tmp / "no-run")], "--out"),
        (["fewshot", "eval", "--out", str(tmp / "no-run"), "--split", "train"], "--split"),
        (["meta", "reweight", "--quick", "--corruption", "noise", *out], "--corruption"),
        (["meta", "reweight", "--quick", "--weights", "mlp", *out], "--weights"),
        (["meta", "reweight", "--quick", "--mode", "forward", *out], "--mode"),
        (["meta", "reweight", "--quick", "--text", str(tmp / "none"), *out], "--text"),
        (["meta", "lr", "--quick", "--grid", "1e-3,fast", *out], "--grid"),
        (["meta", "lr", "--quick", "--grid", "1e-3,-1", *out], "--grid"),
        (["meta", "lr", "--quick", "--text", str(tmp / "none.txt"), *out], "--text"),
    ]  # fmt: skip
    return [("4 ordinary mistakes" if "omniglot" not in " ".join(a) and "ways" not in " ".join(a)
             and "shots" not in " ".join(a) else "5 checked before work", " ".join(a),
             expect_error(a, m)) for a, m in specs]  # fmt: skip


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


def run_folder_cases(tmp: Path) -> list:
    """Classes 1-3 on real (tiny) runs of ``fewshot train`` and ``meta lr --quick``."""
    cases = []
    run = tmp / "fewshot-run"
    train = ["fewshot", "train", *TINY_FEWSHOT, "--out", str(run)]

    def fresh_run() -> tuple[str, str]:
        r = run_cli(train)
        ok = r["code"] == 0 and (run / "checkpoints" / "4").exists()
        return ("correct", "trained 4 steps") if ok else ("silent wrong result", r["said"][-200:])

    def relaunch_keeps_files() -> tuple[str, str]:
        before = _files(run)
        r = run_cli(train)
        after = _files(run)
        lost = [k for k, v in before.items() if k not in after and "previous/" not in k]
        if lost:
            return "data lost", f"{len(lost)} files gone: {lost[:3]}"
        return (
            ("correct", "relaunch resumed the finished run")
            if r["code"] == 0
            else ("unclear error", _last_error_line(r["said"]))
        )

    def restart_archives() -> tuple[str, str]:
        before = _files(run)
        r = run_cli([*train, "--restart"])
        kept = sorted((run / "previous").iterdir())[-1] if (run / "previous").exists() else None
        if kept is None or _files(kept) != {k: v for k, v in before.items()
                                            if not k.startswith("previous/")}:  # fmt: skip
            return "data lost", "the earlier run is not in previous/"
        return (
            ("correct", f"earlier run kept in {kept.name}")
            if r["code"] == 0
            else ("unclear error", _last_error_line(r["said"]))
        )

    def other_config_refused() -> tuple[str, str]:
        before = _files(run)
        case = expect_error([*train, "--inner-lr", "0.1"], "differs in inner_lr", "--restart")
        outcome = case()
        return ("data lost", "files changed") if _files(run) != before else outcome

    def torn_metrics_line() -> tuple[str, str]:
        longer = [*train[:-2], "--iterations", "6", "--out", str(run)]
        with open(run / "metrics.jsonl", "a") as f:
            f.write('{"step": 5, "kind": "tr')
        r = run_cli(longer)
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        steps = [m["step"] for m in lines if m["kind"] == "train"]
        if r["code"] == 0 and steps == list(range(1, 7)) and "unreadable line" in r["said"]:
            return "correct", "dropped the torn line with a warning; resumed to step 6"
        return "silent wrong result", f"code {r['code']}, steps {steps}"

    def damaged_latest_checkpoint() -> tuple[str, str]:
        for f in (run / "checkpoints" / "6").rglob("*"):
            if f.is_file() and f.stat().st_size > 64:
                f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        longer = [*train[:-2], "--iterations", "8", "--out", str(run)]
        r = run_cli(longer)
        ok = (
            r["code"] == 0
            and "Restored step 4" in r["said"]
            and (run / "checkpoints" / "8").exists()
        )
        return (
            ("correct", "fell back to step 4, went on to 8")
            if ok
            else ("silent wrong result", _last_error_line(r["said"]))
        )

    def unreadable_checkpoints(kind: str) -> Callable[[], tuple[str, str]]:
        def case() -> tuple[str, str]:
            folder = tmp / f"fewshot-{kind}"
            base = ["fewshot", "train", *TINY_FEWSHOT[:-4], "--iterations", "2",
                    "--checkpoint-every", "2", "--val-every", "0", "--out", str(folder)]  # fmt: skip
            run_cli(base)
            step = folder / "checkpoints" / "2"
            if kind == "empty":
                shutil.rmtree(step)
                step.mkdir()
            else:
                for f in step.rglob("*"):
                    if f.is_file():
                        f.write_bytes(b"foreign")
            return expect_error(base, "checkpoints", "--restart")()

        return case

    def diverging_inner_lr() -> tuple[str, str]:
        folder = tmp / "fewshot-diverge"
        outcome = expect_error(
            ["fewshot", "train", *TINY_FEWSHOT, "--inner-lr", "1e20", "--out", str(folder)],
            "non-finite",
            "step 1",
        )()
        saved = (
            list((folder / "checkpoints").glob("*")) if (folder / "checkpoints").exists() else []
        )
        return outcome if not saved else ("silent wrong result", "a checkpoint was written")

    def killed_before_checkpoint() -> tuple[str, str]:
        folder = tmp / "fewshot-killed"
        folder.mkdir()
        (folder / "metrics.jsonl").write_text('{"step": 1, "kind": "train", "loss": 1.0}\n')
        r = run_cli(["fewshot", "train", *TINY_FEWSHOT, "--out", str(folder)])
        kept = list((folder / "previous").rglob("metrics.jsonl"))
        if not kept:
            return "data lost", "the orphan metrics were not kept"
        return (
            ("correct", "orphan log moved to previous/")
            if r["code"] == 0
            else ("unclear error", _last_error_line(r["said"]))
        )

    def meta_lr_twice() -> tuple[str, str]:
        folder = tmp / "meta-lr"
        argv = ["meta", "lr", "--quick", "--grid", "1e-3,1e-2", "--no-memory-report",
                "--out", str(folder)]  # fmt: skip
        first = run_cli(argv)
        before = _files(folder)
        second = run_cli(argv)
        lost = [k for k in before if k not in _files(folder)]
        if lost:
            return "data lost", f"{lost[:3]}"
        ok = first["code"] == 0 and second["code"] == 0 and "resuming" in second["said"]
        return (
            ("correct", "second launch resumed")
            if ok
            else ("silent wrong result", _last_error_line(first["said"] + second["said"]))
        )

    def strict_json_everywhere() -> tuple[str, str]:
        bad = []
        # Checkpoint folders are orbax's (and some were damaged on purpose above).
        for path in (p for p in tmp.rglob("*.json*") if "checkpoints" not in p.parts):
            for line in path.read_text().splitlines() if path.suffix == ".jsonl" else [
                    path.read_text()]:  # fmt: skip
                if not line.strip():
                    continue
                try:
                    json.loads(line, parse_constant=lambda t: (_ for _ in ()).throw(ValueError(t)))
                except ValueError:
                    bad.append(path.name)
        return (
            ("correct", "every JSON/JSONL file is strict")
            if not bad
            else ("silent wrong result", f"bare NaN/Infinity in {sorted(set(bad))}")
        )

    def kill_9_and_resume() -> tuple[str, str]:
        """A real kill (SIGKILL, no clean-up) in the middle of a run, then the same command."""
        import signal
        import subprocess

        folder, reference = tmp / "fewshot-kill9", tmp / "fewshot-kill9-reference"
        argv = ["fewshot", "train", *TINY_FEWSHOT[:-6], "--iterations", "40",
                "--checkpoint-every", "3", "--val-every", "0"]  # fmt: skip
        run_cli([*argv, "--out", str(reference)])
        command = [sys.executable, "-m", "metagrad", *argv, "--out", str(folder)]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        metrics = folder / "metrics.jsonl"
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            lines = metrics.read_text().count("\n") if metrics.exists() else 0
            if lines >= 8:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.2)
        proc.wait()
        r = run_cli([*argv, "--out", str(folder)])

        def strip(path: Path) -> list:
            rows = [json.loads(x) for x in path.read_text().splitlines()]
            return [{k: v for k, v in row.items() if k != "time_s"} for row in rows]

        same = r["code"] == 0 and strip(metrics) == strip(reference / "metrics.jsonl")
        return (
            ("correct", "killed with SIGKILL, resumed: metrics identical")
            if same
            else (
                "silent wrong result",
                f"code {r['code']}; metrics differ from an uninterrupted run",
            )
        )

    def diverging_meta_lr() -> tuple[str, str]:
        argv = ["meta", "reweight", "--quick", "--lr", "1e30", "--no-memory-report",
                "--out", str(tmp / "meta-diverge")]  # fmt: skip
        r = run_cli(argv)
        if r["escaped"]:
            return "traceback", r["escaped"].strip().splitlines()[-1]
        if r["code"] == 0:
            return "silent wrong result", "a diverging inner learning rate finished with exit 0"
        if "non-finite" in r["said"]:
            return "clear error", _last_error_line(r["said"])
        return "unclear error", _last_error_line(r["said"])

    cases += [
        ("1 non-finite", "meta reweight --lr 1e30 (inner Adam overflows)", diverging_meta_lr),
        ("2 history", "kill -9 during fewshot train, then the same command", kill_9_and_resume),
        ("3 damaged files", "fresh fewshot run", fresh_run),
        ("2 history", "relaunch without flags keeps every file", relaunch_keeps_files),
        ("2 history", "--restart keeps the earlier run in previous/", restart_archives),
        ("4 ordinary mistakes", "resume with another configuration names the field",
         other_config_refused),
        ("3 damaged files", "torn last metrics line", torn_metrics_line),
        ("3 damaged files", "damaged newest checkpoint", damaged_latest_checkpoint),
        ("3 damaged files", "empty checkpoint step folder", unreadable_checkpoints("empty")),
        ("3 damaged files", "foreign files in a checkpoint", unreadable_checkpoints("foreign")),
        ("1 non-finite", "fewshot train --inner-lr 1e20", diverging_inner_lr),
        ("2 history", "run killed before its first checkpoint", killed_before_checkpoint),
        ("2 history", "meta lr launched twice", meta_lr_twice),
        ("1 non-finite", "strict JSON in every file written", strict_json_everywhere),
    ]  # fmt: skip
    return cases


def environment_cases(tmp: Path) -> list:
    a_file = tmp / "cache-file"
    a_file.write_text("x")

    def unusable_cache() -> tuple[str, str]:
        old = os.environ.get("METAGRAD_CACHE")
        os.environ["METAGRAD_CACHE"] = str(a_file)
        try:
            return expect_error(["meta", "lr", "--quick", "--out", str(tmp / "o")],
                                "METAGRAD_CACHE")()  # fmt: skip
        finally:
            if old is None:
                del os.environ["METAGRAD_CACHE"]
            else:
                os.environ["METAGRAD_CACHE"] = old

    return [("4 ordinary mistakes", "METAGRAD_CACHE names a file", unusable_cache)]


def library_cases() -> list:
    """Class 1 and 6 through the Python API."""
    import jax.numpy as jnp
    import numpy as np
    import optax

    import metagrad

    def nan_data_through_meta_train_step() -> tuple[str, str]:
        problem = metagrad.Bilevel(
            inner_loss=lambda p, w, b: jnp.mean(w * (b[0] @ p - b[1]) ** 2),
            outer_loss=lambda p, w, b: jnp.mean((b[0] @ p - b[1]) ** 2),
            inner_optimizer=optax.sgd(0.1), steps=2,
        )  # fmt: skip
        x = jnp.ones((4, 3)).at[1, 1].set(jnp.nan)
        batch = (x, jnp.zeros(4))
        opt = optax.adam(0.1)
        step = metagrad.meta_train_step(problem, opt, return_grad=True)
        meta = jnp.ones(4)
        new, _, value, grad = step(meta, opt.init(meta), params=jnp.zeros(3), inner_batch=batch,
                                   outer_batch=(jnp.ones((4, 3)), jnp.zeros(4)))  # fmt: skip
        if not np.array_equal(new, meta):
            return "silent wrong result", "a NaN step was applied"
        try:
            metagrad.raise_if_nonfinite(1, {"outer value": value}, meta_grad=grad)
        except metagrad.NonFiniteError as err:
            return "clear error", str(err)[:200]
        return "silent wrong result", "not reported"

    def budget_without_auto() -> tuple[str, str]:
        try:
            metagrad.Bilevel(inner_loss=lambda p, m, b: p, outer_loss=lambda p, m, b: p,
                             inner_optimizer=optax.sgd(1.0), steps=1, memory_budget=2**30)  # fmt: skip
        except ValueError as err:
            return ("clear error" if "memory_budget" in str(err) else "unclear error"), str(err)[
                :200
            ]
        return "silent wrong result", "accepted"

    def refused(what: str, fn: Callable[[], Any], mention: str) -> Callable[[], tuple[str, str]]:
        def case() -> tuple[str, str]:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    fn()
                except (ValueError, TypeError) as err:
                    good = mention in str(err)
                    return ("clear error" if good else "unclear error"), str(err)[:200]
            said = " ".join(str(w.message) for w in caught)
            if mention in said:
                return "clear error", f"warning: {said[:200]}"
            return "silent wrong result", f"{what} was accepted"

        return case

    def mlp(sizes: tuple[int, ...]) -> Any:
        import jax

        from metagrad.models import MLP

        return MLP(sizes).init(jax.random.PRNGKey(0))

    from metagrad import optim

    optimiser_cases = [
        ("make_optimizer('sgd', exponent=0.5)",
         lambda: optim.make_optimizer("sgd", 0.1, exponent=0.5), "exponent"),
        ("K-FAC with no layers", lambda: optim.kfac(()), "layers is empty"),
        ("find_layers on a loss without a layer",
         lambda: optim.find_layers(lambda p, x: jnp.sum(p * x), jnp.ones(3), jnp.ones(3)),
         "no dense or convolution layer"),
        ("set_base_shapes with a base of another input size",
         lambda: optim.set_base_shapes(mlp((32, 64, 64, 3)), mlp((8, 32, 32, 3))),
         "same input size"),
    ]  # fmt: skip
    return [
        *(("6 silent", name, refused(name, fn, m)) for name, fn, m in optimiser_cases),
        ("1 non-finite", "NaN data through meta_train_step", nan_data_through_meta_train_step),
        ("6 silent", "memory_budget with mode='mixflow'", budget_without_auto),
    ]


def main_(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write every case and the counts here")
    parser.add_argument("--quick", action="store_true", help="skip the runs of real commands")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="metagrad-faults-"))
    cases = numeric_flag_cases() + path_cases(tmp) + budget_cases() + list_and_pattern_cases(tmp)
    cases += environment_cases(tmp) + library_cases()
    if not args.quick:
        cases += run_folder_cases(tmp)
    rows = []
    start = time.perf_counter()
    for i, (kind, name, case) in enumerate(cases, 1):
        try:
            outcome, detail = case()
        except BaseException:  # noqa: BLE001 - a harness case itself broke: count it as a traceback
            outcome, detail = "traceback", traceback.format_exc().strip().splitlines()[-1]
        rows.append({"class": kind, "case": name, "outcome": outcome, "detail": detail})
        mark = "ok " if outcome in GOOD else "BAD"
        print(f"[{i:3d}/{len(cases)}] {mark} {outcome:19s} {name[:90]}", file=sys.stderr)
    counts = Counter((r["class"], r["outcome"]) for r in rows)
    classes = sorted({r["class"] for r in rows})
    print("\n| class | " + " | ".join(OUTCOMES) + " | cases |")
    print("|---|" + "---|" * (len(OUTCOMES) + 1))
    for c in classes:
        n = sum(counts[(c, o)] for o in OUTCOMES)
        print(f"| {c} | " + " | ".join(str(counts[(c, o)]) for o in OUTCOMES) + f" | {n} |")
    total = Counter(r["outcome"] for r in rows)
    print(
        "| **all** | " + " | ".join(f"**{total[o]}**" for o in OUTCOMES) + f" | **{len(rows)}** |"
    )
    print(f"\n{len(rows)} cases in {time.perf_counter() - start:.0f} s")
    for r in rows:
        if r["outcome"] not in GOOD:
            print(f"  {r['outcome']}: {r['case']}\n    {r['detail']}")
    if args.json:
        from metagrad.files import write_json

        write_json(args.json, {"counts": {o: total[o] for o in OUTCOMES}, "cases": rows,
                               "by_class": {c: {o: counts[(c, o)] for o in OUTCOMES}
                                            for c in classes}})  # fmt: skip
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if all(r["outcome"] in GOOD for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main_())
