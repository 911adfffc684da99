"""The 2-D task: nuclear-centre localisation on SiPaKMeD (SPEC sections 2, 3, 5, 9).

Stages, in order (conf/task/sipakmed.yaml): `archives` download (only the cropped cells of the
five class archives) and the authors' invalid list, `preprocess` (the compact image cache),
`folds`; then `loader` gives the trainer the affine variants of every image, warped on the device
(`warp`). `cells` holds the pure per-cell functions; `synthetic` generates a SiPaKMeD in the
official archive layout for tests, demos and benchmarks.
"""
