"""Evaluation against the paper's protocols (spec ``damc.md`` §4) and the toy posterior experiment (§9).

* :mod:`~engine.eval.cli`: ``python -m engine.eval RUN_DIR --metrics ...`` and the report table;
* :mod:`~engine.eval.fid`: FID with the TF-ported Inception, cached real statistics, float64 Fréchet distance;
* :mod:`~engine.eval.metrics`: reconstruction MSE and MNIST anomaly AUPRC;
* :mod:`~engine.eval.chains`: long-run prior chains (paper Fig. 4);
* :mod:`~engine.eval.toy.experiment`: the 2-D toy of paper App. E.1 with its exact posterior (``python -m engine.toy``);
  :mod:`~engine.eval.toy.authors` (the authors' toy exactly), :mod:`~engine.eval.toy.evaluate` (per-x and pooled
  distances), :mod:`~engine.eval.toy.study` (pre-registered criteria, several seeds, the CLI);
* :mod:`~engine.eval.study`: DAMC vs short-run LEBM on the digits (``python -m engine.study digits``), measured
  with :mod:`~engine.eval.digits_features` (KID / FID in a digit classifier's features);
* :mod:`~engine.eval.distances`, :mod:`~engine.eval.plots`: sliced W2 / MMD; PIL figures.
"""
