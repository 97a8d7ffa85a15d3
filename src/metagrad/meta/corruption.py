"""Corrupting a fraction of training sequences, for data-weighting experiments.

Three kinds, from subtle to blatant for a byte-level LM of Python code:

* ``"shuffle"``: the bytes of the sequence in a random order. The byte histogram is unchanged, so
  only the order (what a language model learns) gives it away.
* ``"random"``: bytes drawn uniformly from 0..255 (mostly not even valid UTF-8).
* ``"domain"``: real text of the wrong domain: windows of English prose (by default the Python
  documentation topics that ship with the interpreter, :func:`metagrad.data.stdlib_prose`).
"""

from __future__ import annotations

import numpy as np

CORRUPTIONS: tuple[str, ...] = ("shuffle", "random", "domain")


def corrupt(
    tokens: np.ndarray,
    fraction: float,
    kind: str,
    seed: int,
    *,
    domain_text: bytes | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Corrupts exactly ``round(fraction * n)`` randomly chosen sequences.

    Args:
      tokens: ``uint8 (n, seq_len)`` byte sequences (not modified).
      fraction: the fraction p of sequences to corrupt, in [0, 1).
      kind: one of :data:`CORRUPTIONS`.
      seed: seed of which sequences are corrupted and how.
      domain_text: the out-of-domain text for ``kind="domain"`` (at least ``seq_len`` bytes).

    Returns:
      ``(corrupted tokens, mask)``: a new array, and a boolean ``(n,)`` mask of the corrupted rows.
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {', '.join(CORRUPTIONS)}; got {kind!r}.")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"corruption fraction must be in [0, 1); got {fraction!r}.")
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.dtype != np.uint8:
        raise ValueError(f"tokens must be uint8 (n, seq_len); got {tokens.dtype} {tokens.shape}.")
    n, seq_len = tokens.shape
    rng = np.random.default_rng([seed, 0xC0])
    rows = np.sort(rng.permutation(n)[: int(round(fraction * n))])
    out = tokens.copy()
    mask = np.zeros(n, bool)
    mask[rows] = True
    if kind == "shuffle":
        # One independent permutation per row: argsort of uniform keys.
        order = np.argsort(rng.random((len(rows), seq_len)), axis=1)
        out[rows] = np.take_along_axis(tokens[rows], order, axis=1)
    elif kind == "random":
        out[rows] = rng.integers(0, 256, (len(rows), seq_len), dtype=np.uint8)
    else:
        if domain_text is None or len(domain_text) < seq_len:
            have = 0 if domain_text is None else len(domain_text)
            raise ValueError(
                f"corruption 'domain' needs domain_text of at least seq_len={seq_len} bytes; got "
                f"{have}."
            )
        source = np.frombuffer(domain_text, np.uint8)
        starts = rng.integers(0, len(source) - seq_len + 1, len(rows))
        out[rows] = source[starts[:, None] + np.arange(seq_len)[None, :]]
    return out, mask
