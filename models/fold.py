"""Fold BatchNorm into the preceding conv (per switch, paper fact 2)."""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .slimmable import SharedSliceConv2d

__all__ = ["fold_batchnorm"]


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``Conv2d -> BatchNorm2d`` pair inside ``nn.Sequential``s, in place.

    The conv takes the folded weights and the BN becomes ``Identity``, so
    indices (and anything addressing them) keep their meaning. A conv that shares the net's weights
    (:class:`~models.slimmable.SharedSliceConv2d`) becomes one that folds at each call instead.
    """
    for child in module.children():
        fold_batchnorm(child)
    if isinstance(module, nn.Sequential):
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                module[i + 1] = nn.Identity()
            elif isinstance(conv, SharedSliceConv2d) and isinstance(bn, nn.BatchNorm2d):
                module[i] = conv.folded(bn)
                module[i + 1] = nn.Identity()
    return module
