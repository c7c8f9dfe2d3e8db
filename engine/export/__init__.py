"""A trained run's DAMC prior sampler, outside training: draw images from it, export it.

* :mod:`~engine.export.graphs`: the sampler as exportable graphs (per-step or whole), randomness as inputs;
* :mod:`~engine.sampling.noise`: the per-sample noise stream every path consumes (engine, fast path, artifacts);
* :mod:`~engine.export.artifact`: the artifact directory, its ``sampler.json`` sidecar, atomic writes;
* one module per format: :mod:`~engine.export.to_pt2`, :mod:`~engine.export.to_onnx`,
  :mod:`~engine.export.to_aoti`, :mod:`~engine.export.to_tensorrt`;
* :mod:`~engine.export.build`: export + checks + verification; :mod:`~engine.export.runner`: load and drive one;
* :mod:`~engine.export.cli` (``python -m engine.export``) and :mod:`~engine.export.sample`
  (``python -m engine.sample``).
"""
