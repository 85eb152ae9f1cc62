"""Models: the Inception family of the paper's Figures 1-4, Xception (Keras's, and a mini one) and
Keras's Inception V3, the paper's baseline."""
from .inception import (ConvUnit, DepthwiseSeparable, ExtremeInception, InceptionV3Module,
                        ReformulatedInception, SimplifiedInception, extreme_params, segment_flops,
                        segment_params, segment_spectrum, separable_params, simplified_to_reformulated)
from .keras_weights import (decode_predictions, get_imagenet_weights, imagenet_classes,
                            load_keras_weights, preprocess_input)
from .xception import Xception, XceptionNet, mini_xception
from .inception_v3 import InceptionV3

__all__ = ["ConvUnit", "InceptionV3Module", "SimplifiedInception", "ReformulatedInception",
           "simplified_to_reformulated", "ExtremeInception", "DepthwiseSeparable", "segment_params",
           "segment_flops", "segment_spectrum", "extreme_params", "separable_params", "Xception",
           "XceptionNet", "mini_xception", "load_keras_weights", "get_imagenet_weights",
           "preprocess_input", "decode_predictions", "imagenet_classes", "InceptionV3"]
