"""What a student's latency is predicted from: the work and the memory traffic of its
operators, read off the space's layer plan (`SearchSpace.plan`).

Per architecture, one number per name in FEATURES:

| feature | counts |
| --- | --- |
| `dense_macs` | multiply-accumulates of full convolutions (the stem, `conv` layers) |
| `depthwise_macs` | of depthwise convolutions |
| `pointwise_macs` | of 1x1 convolutions (expand, project, shortcut, head) |
| `small_macs` | of squeeze-excite and classifier layers (vector-sized) |
| `pool_macs` | window elements the 3x3 average pools of `pool` skips read |
| `activation_elems` | activation elements read and written, all operators |
| `weight_elems` | parameters read |
| `ops` | operators run (each convolution, padding, pool, add, multiply, layer of SE) |
| `pool_ops` | of them, the average pools of `pool` skips |

A latency is close to a sum of these, each at its own cost per unit on a device: the
predictor (`akd_mobile.latency_predictor`) fits those costs. The average pools have their
own two features because the measurements say they cost far more than their arithmetic (on
this project's x86 host, a predictor that counted them as depthwise work erred most on the
students with the most pool shortcuts; docs/latency-predictor.md).

A kernel computes whole tiles of channels: XNNPACK's f32 convolutions on x86 produce 8 or 16
output channels at a time, on Arm NEON 4 or 8, so 17 channels cost as much as 32 where the
tile is 16. The MAC features therefore count a convolution's output channels (a depthwise
one's or a pool's channels) rounded up to a multiple of `tile`; traffic and parameters are
counted as they are. The predictor chooses the tile per device among CHANNEL_TILES (1: no rounding).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from akd_mobile.space import ArchSpec, LayerPlan, SearchSpace

FEATURES = ("dense_macs", "depthwise_macs", "pointwise_macs", "small_macs", "pool_macs", "activation_elems",
            "weight_elems", "ops", "pool_ops")
CHANNEL_TILES = (1, 4, 8, 16, 32)


def arch_features(space: SearchSpace, arch: ArchSpec, tile: int = 1) -> np.ndarray:
    """The FEATURES of `arch` (a member of `space`), in order, as float64, its convolutions'
    channels rounded up to a multiple of `tile` in the MAC counts."""
    f: Counter[str] = Counter()
    c, h, w = space.input_shape
    plan = space.plan(arch)
    stem_px = plan[0].in_hw[0] * plan[0].in_hw[1]
    f["dense_macs"] += 9 * c * _tiled(space.stem_channels, tile) * stem_px
    f["activation_elems"] += c * h * w + space.stem_channels * stem_px
    f["ops"] += 1
    for layer in plan:
        _layer(layer, tile, f)
    head_h, head_w = space.head_hw()
    head_px, last = head_h * head_w, space.last_channels(arch)
    f["pointwise_macs"] += last * _tiled(space.head_channels, tile) * head_px
    f["small_macs"] += space.head_channels * space.num_classes
    f["activation_elems"] += (last + 2 * space.head_channels) * head_px + space.head_channels + space.num_classes
    f["ops"] += 3  # head convolution, global pool, classifier
    f["weight_elems"] += space.cost(arch).params
    return np.array([float(f[name]) for name in FEATURES])


def _tiled(channels: int, tile: int) -> int:
    """`channels` rounded up to a multiple of `tile`."""
    return -(-channels // tile) * tile


def _layer(layer: LayerPlan, tile: int, f: Counter[str]) -> None:
    """Add one layer's work and traffic to `f` (weights are counted once, for the whole net)."""
    in_px = layer.in_hw[0] * layer.in_hw[1]
    out_px = layer.out_hw[0] * layer.out_hw[1]
    k2, cin, cout, mid = layer.kernel**2, layer.in_ch, layer.out_ch, layer.mid_ch
    cin_t, cout_t, mid_t = _tiled(cin, tile), _tiled(cout, tile), _tiled(mid, tile)
    if layer.op == "conv":
        f["dense_macs"] += k2 * cin * cout_t * out_px
        f["activation_elems"] += cin * in_px + cout * out_px
        f["ops"] += 1
        se_on = cout
    elif layer.op == "dw":
        f["depthwise_macs"] += k2 * cin_t * out_px
        f["pointwise_macs"] += cin * cout_t * out_px
        f["activation_elems"] += cin * in_px + 2 * cin * out_px + cout * out_px
        f["ops"] += 2
        se_on = cin
    else:  # MBConv: expand, depthwise, project
        f["pointwise_macs"] += cin * mid_t * in_px + mid * cout_t * out_px
        f["depthwise_macs"] += k2 * mid_t * out_px
        f["activation_elems"] += cin * in_px + 2 * mid * in_px + 2 * mid * out_px + cout * out_px
        f["ops"] += 3
        se_on = mid
    if layer.se_ch:  # global pool, two small layers, a multiply over the map
        f["small_macs"] += 2 * se_on * layer.se_ch
        f["activation_elems"] += 3 * se_on * out_px + 2 * (se_on + layer.se_ch)
        f["ops"] += 4
    if layer.skip == "pool":  # zero padding, a 3x3 average pool with the layer's stride, a 1x1 conv when
        # widths differ, an add
        padded = cin * (layer.in_hw[0] + 2) * (layer.in_hw[1] + 2)
        f["pool_macs"] += 9 * cin_t * out_px
        f["activation_elems"] += cin * in_px + 2 * padded + cin * out_px + 3 * cout * out_px
        f["ops"] += 3
        f["pool_ops"] += 1
        if cin != cout:
            f["pointwise_macs"] += cin * cout_t * out_px
            f["activation_elems"] += cin * out_px + cout * out_px
            f["ops"] += 1
    elif layer.skip == "id" and layer.residual:
        f["activation_elems"] += 3 * cout * out_px
        f["ops"] += 1
