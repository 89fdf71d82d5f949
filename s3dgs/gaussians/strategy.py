"""Densification: gsplat's `DefaultStrategy`, with its opacity reset made to fire.

gsplat 1.5.3 guards the reset with `step % self.reset_every == 0 & step > 0`; by operator precedence
that reads `step % reset_every == (0 & step) > 0`, a chained comparison whose second half `0 > 0` is
always False, so opacities are never reset (fixed upstream after 1.5.3). `DefaultStrategy` here
subclasses gsplat's and performs the reset itself, once, at the steps the original intended.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gsplat.strategy import DefaultStrategy as _GsplatDefault
from gsplat.strategy.ops import reset_opa


@dataclass
class DefaultStrategy(_GsplatDefault):
    """gsplat's DefaultStrategy (3DGS densification, AbsGS gradients with `absgrad=True`) whose
    opacity reset fires every `reset_every` steps while refining. `state["n_resets"]` counts them."""

    def step_post_backward(self, params, optimizers, state: dict[str, Any], step: int, info: dict[str, Any],
                           packed: bool = False):
        super().step_post_backward(params, optimizers, state, step, info, packed=packed)
        if 0 < step < self.refine_stop_iter and step % self.reset_every == 0:
            reset_opa(params=params, optimizers=optimizers, state=state, value=self.prune_opa * 2.0)
            state["n_resets"] = state.get("n_resets", 0) + 1
