"""EBSR: spatial re-scaling plus channel-wise shifting and re-scaling, input dependent.

Each binary conv computes ``BinConv(x + beta) * s(x) * gamma + x`` with
``s = sigmoid(Conv1x1(x))`` and ``[beta, g] = MLP(GAP(x))``, ``gamma = sigmoid(g)``.
The paper's unknowns are options: ``spatial`` ('conv' or XNOR-Net's 'absmean', or None),
``channel`` ('mlp' or None), ``mlp_ratio`` (hidden width / channels) and ``shift``
('dynamic' from the MLP, 'static' as a learnable RSign threshold, or None).
EBSR-light = 16 blocks × 64 channels; EBSR = 32 × 256.
"""
from . import register_arch
from .blocks import BinaryResBlock, BinarySRNet, conv_spec
from .bnnsr_arch import DIV2K_RGB_MEAN

SHIFTS = ("dynamic", "static", None)


@register_arch
class EBSRNet(BinarySRNet):
    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16, upscale=4, upsampler="fp",
                 img_range=1.0, rgb_mean=DIV2K_RGB_MEAN, image_skip=None, act_quantizer="approx_sign",
                 pad_value=1.0, spatial="conv", channel="mlp", shift="dynamic", mlp_ratio=0.25):
        if shift not in SHIFTS:
            raise ValueError(f"shift must be one of {SHIFTS}, got {shift!r}")
        if shift == "dynamic" and channel != "mlp":
            raise ValueError("shift='dynamic' comes from the channel MLP: it needs channel='mlp'")
        if shift == "static":
            act_quantizer = "rsign"
        conv = conv_spec(act_quantizer=act_quantizer, weight_scale="mean", pad_value=pad_value)
        unit = dict(conv=conv, spatial=spatial, channel=channel, channel_shift=shift == "dynamic",
                    mlp_ratio=mlp_ratio, shortcut=True)
        super().__init__(num_in_ch, num_out_ch, num_feat, num_block, upscale, upsampler, img_range, rgb_mean,
                         image_skip, upsampler_conv=conv,
                         block=lambda: BinaryResBlock(num_feat, unit, act="leaky"))
