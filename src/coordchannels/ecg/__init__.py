"""The 1-D task: ECG changepoint localisation on the MIT-BIH VFDB (SPEC sections 1, 3, 5).

Stages, in order (conf/task/ecg.yaml): `download` (the records, verified), `records` extract
(episodes), `augment`, `features` (median filter + stride, once), `folds`; then `loader` gives
the trainer the cached inputs of one arm.
"""

from __future__ import annotations
