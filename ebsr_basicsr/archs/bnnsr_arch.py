"""BNN-SR (Ma et al. 2019, arXiv 1812.06378): binary weights, full-precision activations.

Only the convolutions inside the residual blocks are binarized, each filter with a learnable
scale; activations, head, upsampler and tail stay FP (SRResNet backbone without BN, as
BasicSR's MSRResNet). With FP activations there is no XNOR: the gain is 1 bit per weight.
"""
from . import register_arch
from .blocks import BinaryResBlock, BinarySRNet, conv_spec

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


@register_arch
class BNNSR(BinarySRNet):
    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16, upscale=4, upsampler="fp",
                 img_range=1.0, rgb_mean=DIV2K_RGB_MEAN, image_skip=None):
        conv = conv_spec(act_quantizer=None, weight_scale="learnable", pad_value=0)
        unit = dict(conv=conv, bias=True, shortcut=False)
        super().__init__(num_in_ch, num_out_ch, num_feat, num_block, upscale, upsampler, img_range, rgb_mean,
                         image_skip, upsampler_conv=conv,
                         block=lambda: BinaryResBlock(num_feat, unit, act="relu", shortcut=True))
