"""The local SR methods an image can be super-resolved with (LocalSR paper Sec. 1 and Table 1),
their display names, and the closed-form FLOPs of the one that has no network (bicubic).
A leaf module without torch (``clsr-infer --help`` lists the methods)."""

METHODS = ('bicubic', 'pre_crop', 'clsr', 'post_crop')
LABELS = {'bicubic': 'bicubic', 'pre_crop': 'pre-crop', 'clsr': 'CLSR (ours)', 'post_crop': 'post-crop',
          'gt': 'ground truth'}


def bicubic_flops(h, w, scale):
    """FLOPs of separable bicubic upscaling of an ``h x w`` RGB box: per output pixel and
    channel 4 taps x 2 passes, a multiply and an add each (MATLAB's kernel, upscaling)."""
    return 3 * (scale * h) * (scale * w) * 4 * 2 * 2


# Where to look (clsr_arch.proposals): the estimators of a box's SR gain, by name, here so that
# clsr-infer --help lists them without importing torch. The first is the default.
ESTIMATOR_NAMES = ('map', 'cnn', 'pim-detail', 'gradient', 'pim', 'learned')
