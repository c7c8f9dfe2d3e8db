"""The toy posterior experiment of paper App. E.1 (spec ``damc.md`` §9), ``python -m engine.toy``.

* :mod:`~engine.eval.toy.problem`: the problem (pinwheel latents, the fixed likelihood net, the exact posterior on
  a grid, posterior Langevin) and the amortizer used on it;
* :mod:`~engine.eval.toy.experiment`: training and evaluation of one run (the measurements are in its docstring);
* :mod:`~engine.eval.toy.evaluate`: reference sample sets and per-x / pooled distances;
* :mod:`~engine.eval.toy.authors`: the authors' ``toy_example.py`` exactly (``--setup authors``);
* :mod:`~engine.eval.toy.study`: pre-registered criteria, several seeds, the CLI;
* :mod:`~engine.eval.toy.authors_parity`: ``--setup authors`` against the authors' own code, run by hand
  (``python -m engine.eval.toy.authors_parity``; needs their repository).
"""
