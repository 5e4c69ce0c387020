"""splitkit: are the features a sparse autoencoder finds real? Universality and feature splitting
across independently trained one-layer transformers (a reproduction of Bricken et al., 2023)."""

import os as _os

# numba's OpenMP threading layer resizes the process's one OpenMP pool, which torch shares, to
# NUMBA_NUM_THREADS (every core by default) when its first parallel kernel runs: a user's
# OMP_NUM_THREADS=1 would stop holding for torch after the first sparse kernel. So numba is bounded
# by it too, unless the user set NUMBA_NUM_THREADS. (Effective when splitkit is imported before numba.)
_omp = _os.environ.get("OMP_NUM_THREADS", "").strip()
if _omp.isdigit() and int(_omp) > 0 and "NUMBA_NUM_THREADS" not in _os.environ:
    _os.environ["NUMBA_NUM_THREADS"] = str(min(int(_omp), _os.cpu_count() or 1))
del _omp
