"""The ``triton`` backend: fused attention kernels, one module per job.

=============  =================================================================================
``backend``    the :class:`Triton` backend class (what ``backend="triton"`` runs)
``plan``       capability reasons; a call translated into a :class:`~.plan.Plan`, the one schema
               of the kernels' rule arguments (``R`` runtime values, ``F`` compile-time flags)
``configs``    autotune tables per kernel and head dim, the tuning key, TMA pruning
``launch``     launchers: one kernel (or the backward's two) on a plan; the ``Target`` seam
``ops``        custom ops and autograd, derived from the plan's fields; attention sinks
``kernels``    the Triton kernels themselves
=============  =================================================================================
"""
from .backend import Triton
from .plan import interpreting

__all__ = ["Triton", "interpreting"]
