"""``none`` (Vanilla): plain training, the baseline every method is compared with.

Sound under DP-SGD and DP-FedAvg: it adds nothing to what the private trainer already clips,
noises and accounts.
"""

from __future__ import annotations

from training.repair import METHODS
from training.repair.base import RepairMethod


@METHODS.register("none")
class Vanilla(RepairMethod):
    """No repair."""
