"""Differential privacy: the DP-SGD engines, DP-FedAvg's aggregation, accounting, releases, noise.

``ENGINES`` holds the DP-SGD engines by their ``privacy.engine`` name; each is a ``make_private``
with the same arguments, handing back an object of the same interface (``module``, ``optimizer``,
``index_loader``, ``accountant``, ``epsilon``, ``epsilon_parts``, ``per_example_norms``,
``hooks_off``, ``noise_multiplier``, ``sample_rate``, ``steps``, ``noise_generator``,
``releases``), so that the trainer never touches an engine's internals.
"""

from __future__ import annotations

from utils.registry import Registry

ENGINES: Registry = Registry("DP-SGD engine", "privacy.engine")


@ENGINES.register("opacus")
def _opacus(*args, **kwargs):
    """Opacus' per-sample-gradient hooks (the reference)."""
    from privacy import dpsgd

    return dpsgd.make_private(*args, **kwargs)


@ENGINES.register("fast")
def _fast(*args, **kwargs):
    """This project's book-keeping engine (:mod:`privacy.fast_dpsgd`)."""
    from privacy import fast_dpsgd

    return fast_dpsgd.make_private(*args, **kwargs)
