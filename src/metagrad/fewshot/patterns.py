"""Lambda patterns: which layers an inner loop updates at which step.

A pattern is a boolean matrix λ ∈ {0,1}^{K×L} over inner steps k and layers l: λ[k, l] = 1 means
layer l is updated at step k. Patterns are static (Python booleans): they decide which gradients
are compiled, so a frozen layer's gradient is never computed, the backward pass stops below the
lowest updated layer, and the prefix of layers frozen at every step is computed once per task.

References:
  Khabarlak, *Faster Optimization-Based Meta-Learning Adaptation Phase*, 2022, arXiv:2206.05930
  (Lambda patterns).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Pattern:
    """A Lambda pattern: ``matrix[k][l]`` is True when layer ``l`` is updated at inner step ``k``.

    Attributes:
      matrix: K rows (inner steps) of L booleans (layers, in forward order; the head is last).
      name: a short label for tables and plots.

    Examples:
      >>> from metagrad.fewshot import Pattern
      >>> anil = Pattern.top(steps=5, layers=5, m=1)  # ANIL: head only, every step
      >>> anil.name, anil.code
      ('head', '00001/00001/00001/00001/00001')
      >>> Pattern.parse("00001/00001/11111").masks()  # 3 steps: head, head, then all layers
      [[False, False, False, False, True], [False, False, False, False, True], [True, True, True, True, True]]
    """

    matrix: tuple[tuple[bool, ...], ...]
    name: str = ""

    def __post_init__(self) -> None:
        try:
            rows = tuple(tuple(bool(v) for v in row) for row in self.matrix)
        except TypeError:
            raise TypeError(
                f"Pattern: matrix must be a (steps x layers) nested sequence of bools; got "
                f"{self.matrix!r}."
            ) from None
        if not rows or not rows[0] or len({len(r) for r in rows}) != 1:
            raise ValueError(
                "Pattern: matrix must be a non-empty rectangular (steps x layers) table of bools; "
                f"got row lengths {[len(r) for r in rows]}."
            )
        object.__setattr__(self, "matrix", rows)
        if not self.name:
            object.__setattr__(self, "name", self.code)

    # -- properties ------------------------------------------------------------------------------

    @property
    def steps(self) -> int:
        """Number of inner steps K."""
        return len(self.matrix)

    @property
    def layers(self) -> int:
        """Number of layers L."""
        return len(self.matrix[0])

    @property
    def code(self) -> str:
        """Compact text form: rows of 0/1 separated by ``/`` (the input of :meth:`parse`)."""
        return "/".join("".join("1" if v else "0" for v in row) for row in self.matrix)

    @property
    def frozen_prefix(self) -> int:
        """Number of leading layers that no step updates (computed once per task, cached)."""
        for layer in range(self.layers):
            if any(row[layer] for row in self.matrix):
                return layer
        return self.layers

    @property
    def density(self) -> float:
        """Fraction of (step, layer) entries that are updated."""
        return float(np.mean(np.asarray(self.matrix)))

    def masks(self) -> list[list[bool]]:
        """One mask per step, one bool per layer: ``Bilevel(update_masks=...)``."""
        return [list(row) for row in self.matrix]

    def as_array(self) -> np.ndarray:
        """The matrix as a ``(K, L)`` numpy bool array."""
        return np.asarray(self.matrix, dtype=bool)

    def with_steps(self, steps: int) -> Pattern:
        """The pattern for a loop of ``steps`` steps: extra steps repeat the last row."""
        rows = list(self.matrix[:steps]) + [self.matrix[-1]] * max(0, steps - self.steps)
        return Pattern(tuple(rows), self.name if steps == self.steps else "")

    # -- constructors ----------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str, name: str = "") -> Pattern:
        """Parses ``"00001/11111"`` (rows separated by ``/``), as written by :attr:`code`."""
        rows = [r.strip() for r in text.strip().split("/")]
        if not rows or any(not r or set(r) - {"0", "1"} for r in rows):
            raise ValueError(
                f"Pattern.parse: expected rows of 0/1 separated by '/', one row per inner step "
                f"(e.g. '00001/00001/11111'); got {text!r}."
            )
        return cls(tuple(tuple(c == "1" for c in r) for r in rows), name)

    @classmethod
    def from_array(cls, array: np.ndarray | Sequence[Sequence[bool]], name: str = "") -> Pattern:
        """From a ``(K, L)`` boolean array."""
        return cls(tuple(tuple(bool(v) for v in row) for row in np.asarray(array)), name)

    @classmethod
    def full(cls, steps: int, layers: int) -> Pattern:
        """Every layer at every step (plain MAML)."""
        return cls(((True,) * layers,) * steps, "full")

    @classmethod
    def top(cls, steps: int, layers: int, m: int) -> Pattern:
        """The top ``m`` layers at every step (``m = 1``: head only, ANIL)."""
        _check_range("m", m, 1, layers)
        row = (False,) * (layers - m) + (True,) * m
        return cls((row,) * steps, "head" if m == 1 else f"top{m}")

    @classmethod
    def body(cls, steps: int, layers: int) -> Pattern:
        """Every layer but the head at every step (BOIL)."""
        return cls((((True,) * (layers - 1) + (False,)),) * steps, "body")

    @classmethod
    def last_steps(cls, steps: int, layers: int, j: int, m: int | None = None) -> Pattern:
        """The top ``m`` layers (all when None) in the last ``j`` steps only."""
        _check_range("j", j, 1, steps)
        m = layers if m is None else m
        _check_range("m", m, 1, layers)
        on = (False,) * (layers - m) + (True,) * m
        rows = ((False,) * layers,) * (steps - j) + (on,) * j
        return cls(rows, f"last{j}" + ("" if m == layers else f"-top{m}"))

    @classmethod
    def head_then_all(cls, steps: int, layers: int, j: int) -> Pattern:
        """Head only for the first ``steps - j`` steps, then every layer in the last ``j``."""
        _check_range("j", j, 1, steps)
        head = (False,) * (layers - 1) + (True,)
        rows = (head,) * (steps - j) + ((True,) * layers,) * j
        return cls(rows, f"head+all{j}")


def _check_range(name: str, value: int, lo: int, hi: int) -> None:
    if not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"Pattern: {name} must be an int in [{lo}, {hi}]; got {value!r}.")


def structured_family(steps: int, layers: int) -> list[Pattern]:
    """The structured candidate patterns: full, top-m, body, last-j-steps (all or top m),
    head-then-all. Duplicates (same matrix) are removed; order is stable.

    Args:
      steps: K.
      layers: L.

    Returns:
      A list of distinct patterns.
    """
    candidates = [Pattern.full(steps, layers), Pattern.body(steps, layers)]
    candidates += [Pattern.top(steps, layers, m) for m in range(1, layers)]
    for j in range(1, steps):
        candidates.append(Pattern.last_steps(steps, layers, j))
        candidates += [Pattern.last_steps(steps, layers, j, m) for m in range(1, layers)]
        candidates.append(Pattern.head_then_all(steps, layers, j))
    return _unique(candidates)


def all_patterns(steps: int, layers: int, limit: int = 4096) -> Iterator[Pattern]:
    """Every pattern that updates something: 2^(K·L) − 1 of them (exhaustive search).

    Raises:
      ValueError: when 2^(K·L) exceeds ``limit``; use :func:`structured_family` and a search.
    """
    n = steps * layers
    if 2**n > limit:
        raise ValueError(
            f"all_patterns: 2^(steps*layers) = 2^{n} patterns exceed limit={limit}; use the "
            "structured family with successive halving (selection.select_pattern(search="
            "'halving')) or raise the limit."
        )
    for bits in itertools.product((False, True), repeat=n):
        if any(bits):
            yield Pattern.from_array(np.asarray(bits).reshape(steps, layers))


def _unique(patterns: Sequence[Pattern]) -> list[Pattern]:
    seen: set[tuple[tuple[bool, ...], ...]] = set()
    out = []
    for p in patterns:
        if p.matrix not in seen:
            seen.add(p.matrix)
            out.append(p)
    return out
