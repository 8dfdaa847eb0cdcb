"""Autoregressive (linear-prediction) tools shared by the declick and declip stages.

Signals are float64 1-D arrays here; stages loop over channels.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

from archivox.tasks.chain import StageOutput


def without_private(out: StageOutput) -> StageOutput:
    """Drop findings whose key starts with "_" (working data handed from detect to repair).

    ``Stage.__call__`` copies every finding into the metrics as ``found_<key>``;
    arrays and analysis objects do not belong in the catalog.
    """
    out.metrics = {k: v for k, v in out.metrics.items() if not k.startswith("found__")}
    return out
