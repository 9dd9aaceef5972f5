"""A user's own classifier for 3 x 32 x 32 colour images (10 classes): nothing advlab-specific.

advlab builds it with ``factory = "my_net.py:build"`` and fills it from a safetensors file.
"""
from torch import nn


def build(num_classes: int = 10, width: int = 16) -> nn.Module:
    """A small conv net: two conv-ReLU-pool blocks, then a linear layer.

    Args:
        num_classes: outputs (logits).
        width: channels of the first block (the second has twice as many).
    """
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * 8 * 8, num_classes),
    )
