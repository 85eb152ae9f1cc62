"""minixception: Xception (Chollet, 2017) from scratch on NumPy and CuPy.

    import minixception as mx
    layer = mx.nn.SeparableConv2D(32, 64)
    y = layer(x)            # x: (N, H, W, 32), NHWC
    dx = layer.backward(dy)
"""
from . import backend, functional, gradcheck, losses, nn, optim
from .backend import get_array_module, gpu_available, to_device, to_numpy
from . import models
from .summary import count_params, summary
from .kernels import use_kernels
from .kernels.cpu.threads import cpu_threads

from . import compare, data
from .checkpoint import load_checkpoint, save_checkpoint
from . import train          # mx.train.fit, as documented
from . import ablate         # mx.ablate.fair_comparison: the paper's ablations, fairly

__version__ = "0.1.0"

__all__ = ["backend", "functional", "gradcheck", "losses", "nn", "optim", "get_array_module",
           "gpu_available", "to_device", "to_numpy", "__version__"]
__all__ += ["data", "save_checkpoint", "load_checkpoint", "train", "ablate"]
__all__ += ["models", "count_params", "summary", "use_kernels", "cpu_threads"]

from . import diagrams  # noqa: E402  (figures and source listings; imports matplotlib only when drawing)
__all__ += ["diagrams"]
