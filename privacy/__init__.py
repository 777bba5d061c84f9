"""Differential privacy: the DP-SGD engines, DP-FedAvg's server mechanism, accounting, releases,
noise.

``ENGINES`` holds the DP-SGD engines by their ``privacy.engine`` name; each is a ``make_private``
with the same arguments (:class:`privacy.engine.Wrap`), handing back a
:class:`privacy.engine.PrivateEngine` (the model, optimizer and index loader to train with, the
noise draw, the accountant step and state, per-example norms, ε and ε parts), so that a trainer
never touches an engine's internals. DP-FedAvg's mechanism is :class:`privacy.dpfedavg.DPFedAvg`,
accounted the same way (:class:`privacy.engine.Accounted`); every mechanism's σ comes from
:func:`privacy.accounting.resolve_noise_multiplier`.
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
