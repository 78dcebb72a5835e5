"""An experiment, not a feature yet: `rebirth ...` with the `--time`/`--macs` rank greedy given a
rank floor, so no kept rank of a mode of n channels falls below max(4, n // DIV).

    OPENBLAS_NUM_THREADS=1 .venv/bin/python scripts/try_rank_floor.py DIV tucker MODEL WEIGHTS --time 0.5 -o OUT ...

Everything after DIV is a `rebirth` command line, run with the floored greedy. Why: at `--time 0.5`
the greedy cuts most output ranks of the Fashion-MNIST Slim net to 1 (weight errors above 0.9), and
the relearned net is dead (README, rows T4/T4R). Measured with DIV 8 on the shipped Slim net: the
greedy stops at 0.60 of the predicted time (the floor binds), and `rebirth relearn` at its defaults
then reads 82.0 % top-1 on the --val images (DIV 4: 83.0 %), against 72.35 % for the unfloored
`--time 0.6`."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deeprebirth import cli  # noqa: E402
from deeprebirth.transforms import rank_budget as rb  # noqa: E402


def floored(div: int):
    """tucker_options and svd_options that drop the candidates below the floor."""
    plain_tucker, plain_svd = rb.tucker_options, rb.svd_options

    def floor(n: int) -> int:
        return min(n, max(4, n // div))

    def keep(opt: rb.Options, ok: np.ndarray) -> rb.Options:
        return rb.Options(opt.name, opt.macs0, [r for r, k in zip(opt.ranks, ok) if k], opt.macs[ok],
                          opt.errors[ok], opt.layers[ok])

    def tucker_options(name, geo, one_sided=False):
        opt = plain_tucker(name, geo, one_sided)
        T, S = geo.W.shape[:2]
        return keep(opt, np.array([r["R3"] >= floor(S) and r["R4"] >= floor(T) for r in opt.ranks], dtype=bool))

    def svd_options(name, geo):
        opt = plain_svd(name, geo)
        T, S = geo.W.shape
        return keep(opt, np.array([r["r"] >= floor(min(S, T)) for r in opt.ranks], dtype=bool))

    return tucker_options, svd_options


if __name__ == "__main__":
    if len(sys.argv) < 3 or not sys.argv[1].isdigit() or int(sys.argv[1]) < 1:
        sys.exit("usage: try_rank_floor.py DIV REBIRTH-COMMAND [ARGS ...]  (DIV: a whole number >= 1)")
    rb.tucker_options, rb.svd_options = floored(int(sys.argv[1]))
    sys.argv = ["rebirth", *sys.argv[2:]]
    cli.main()
