"""SCALES on the CNN backbone: layer-wise scaling factor, spatial and channel re-scaling.

Each binary conv computes ``alpha_l * BinConv(sign((x - b) / alpha_l)) * s(x) * gamma(x) + x``:
``alpha_l`` a learnable scalar per layer (``layer_scale``; elastic binarization, see
``ElasticSign``), ``s`` the parameter-free spatial factor ``box_3(mean_c|x|)`` (``spatial``:
'absmean', 'conv' or None) and ``gamma = sigmoid(w * GAP(x) + b)`` per channel (``channel``:
'affine', 'mlp' or None) — cheaper than EBSR's in parameters and OPs. ``channel=None``
makes every output pixel depend on a bounded neighbourhood only, so tiled inference is exact.
"""
from . import register_arch
from .blocks import BinaryResBlock, BinarySRNet, conv_spec
from .bnnsr_arch import DIV2K_RGB_MEAN


def scales_conv(layer_scale: bool, pad_value: float) -> dict:
    return conv_spec(act_quantizer="elastic_sign" if layer_scale else "rsign", weight_scale="mean",
                     pad_value=pad_value)


@register_arch
class SCALESNet(BinarySRNet):
    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16, upscale=4, upsampler="fp",
                 img_range=1.0, rgb_mean=DIV2K_RGB_MEAN, image_skip=None, pad_value=1.0, layer_scale=True,
                 spatial="absmean", channel="affine", body_end="conv"):
        conv = scales_conv(layer_scale, pad_value)
        unit = dict(conv=conv, spatial=spatial, channel=channel, shortcut=True)
        super().__init__(num_in_ch, num_out_ch, num_feat, num_block, upscale, upsampler, img_range, rgb_mean,
                         image_skip, upsampler_conv=conv, body_end=body_end,
                         block=lambda: BinaryResBlock(num_feat, unit, act="leaky"))
