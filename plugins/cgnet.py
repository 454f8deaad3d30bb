"""``cgnet`` — the CGNet baseline of the CDG seed (CGNet, Hua et al. 2019, in two-view training): one shared
base path (the diagonal groups) and a mask per view — each crop's mask from its own base output, as the CDG
paper's CGNet_SimCLR rows do. ``unified: true`` is the paper's Table 1 *unified gating* ablation instead
(crop 0's mask reused for crop 1; the momentum encoder does the same with its own crop 0).

``control`` gives the static controls a dynamic-gating claim needs, on the same single base path:
``base_only`` (the G-grouped conv alone; ``groups: 2`` for the static network with about the gated one's
MACs) and ``random`` (a fixed data-independent pattern instead of the normalised base output).

Same gated convolution, threshold loss and options as its sibling ``cdg``
(``solo_sparse.families.channel_gating``).
"""
from __future__ import annotations

from dataclasses import dataclass

from solo_sparse.core.config import key_error
from solo_sparse.core.plugin import Branch
from solo_sparse.families.channel_gating import ThresholdGatingConfig, ThresholdGatingPlugin


@dataclass
class CGNetConfig(ThresholdGatingConfig):
    #: CGNet's unified gating (the CDG paper's Table 1 ablation): crop 1 reuses crop 0's masks instead of its own
    unified: bool = False

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.unified, bool):
            raise key_error("unified", self.unified, "true (crop 1 reuses crop 0's masks) or false (a mask per view)")
        if self.unified and self.control != "none":
            raise key_error("control", self.control, "a static control has no data-dependent masks to share: "
                                                     "set unified: false")


class CGNet(ThresholdGatingPlugin):
    name = "cgnet"
    description = ("CGNet channel gating: one shared base path, a mask per view (unified: true reuses crop 0's "
                   "masks); control: base_only | random for the static controls")
    Config = CGNetConfig
    #: runs saved before ``unified`` existed used unified gating
    legacy_defaults = {**ThresholdGatingPlugin.legacy_defaults, "unified": True}

    def __init__(self, config):
        super().__init__(config)
        # control: base_only trains no gate: tau and cond_scale are kept (the checkpoint layout) but get no
        # gradient, so DDP without find_unused_parameters is refused before step 0
        self.leaves_parameters_unused = self.config.control == "base_only"

    @classmethod
    def eval_paths(cls):
        return ("a1",)          # one base path: a2 is never trained

    def route(self, branch: Branch) -> str:
        if branch.crop != 1:
            return "a1"
        return "follow" if self.unified else "a1_own"
