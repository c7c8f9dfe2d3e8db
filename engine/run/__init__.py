"""A training run on disk and how it is driven: the ``engine.train`` command, checkpoints, the divergence guard
and PNG grids.

* :mod:`~engine.run.train`: the training CLI and loop (``python -m engine.train``);
* :mod:`~engine.run.checkpoint`: atomic checkpoints that resume bit-for-bit; ``load_run`` for eval and sampling;
* :mod:`~engine.run.guard`: non-finite detection without per-step host syncs;
* :mod:`~engine.run.images`: torchvision-style PNG grids.
"""
