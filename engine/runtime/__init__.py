"""How the loops run on the machine at hand: device, seeds and backend flags (:mod:`~engine.runtime.system`),
which speed-ups are on (:mod:`~engine.runtime.perf`), and the loop implementations behind the
:class:`~engine.runtime.chains.Chains` interface: the eager fp32 reference (:mod:`~engine.runtime.chains`) and
the fast path (:mod:`~engine.runtime.fast`, with CUDA-graph capture in :mod:`~engine.runtime.graphs`).

Device, dtype and compile decisions live here and nowhere else.
"""
