"""The statistics of the per-fold logs (SPEC section 7) and the stats stage.

- `comparison`: per-fold values (final R², spline instability), the paper's paired bootstrap, the
  exact test beside it, Holm, and the comparison tables;
- `inference`: the exact sign-flip test and the random-effects pool over replications;
- `stage`: the stats stage (tables and figures written as one set) and the guard on committed results;
- `restats`: committed tables recomputed from their committed logs (`make restats`).
"""
