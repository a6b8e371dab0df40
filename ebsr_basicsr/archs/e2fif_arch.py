"""E2FIF (the baseline EBSR and SCALES compare against).

Every binary conv (sign activations with the ApproxSign gradient, unscaled ``sign(W)``
weights, a bias) is followed by BatchNorm and has its own FP shortcut:
``o1 = LeakyReLU(BN(BinConv(x)) + x)``, ``o2 = BN(BinConv(o1)) + o1``.
SRResNet-E2FIF is 16 blocks × 64 channels; EDSR-E2FIF 32 × 256.
"""
from . import register_arch
from .blocks import BinaryResBlock, BinarySRNet, conv_spec
from .bnnsr_arch import DIV2K_RGB_MEAN


@register_arch
class E2FIFNet(BinarySRNet):
    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16, upscale=4, upsampler="fp",
                 img_range=1.0, rgb_mean=DIV2K_RGB_MEAN, image_skip=None, act_quantizer="approx_sign",
                 pad_value=1.0):
        conv = conv_spec(act_quantizer=act_quantizer, weight_scale="none", pad_value=pad_value)
        unit = dict(conv=conv, bias=True, norm=True, shortcut=True)
        super().__init__(num_in_ch, num_out_ch, num_feat, num_block, upscale, upsampler, img_range, rgb_mean,
                         image_skip, upsampler_conv=conv,
                         block=lambda: BinaryResBlock(num_feat, unit, act="leaky"))
