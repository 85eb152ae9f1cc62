"""Layers holding parameters around the functional math, and containers."""
from .containers import Concat, Residual, Sequential
from .layers import (ELU, AvgPool2D, BatchNorm2D, Conv2D, Dense, DepthwiseConv2D, Dropout, Flatten,
                     GlobalAvgPool2D, MaxPool2D, PointwiseConv2D, ReLU, SeparableConv2D)
from .module import Module, Parameter, inference_mode

__all__ = ["Module", "Parameter", "inference_mode", "Sequential", "Residual", "Concat", "Conv2D",
           "DepthwiseConv2D", "PointwiseConv2D", "SeparableConv2D", "BatchNorm2D", "ReLU", "ELU",
           "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "Dense", "Dropout", "Flatten"]
