"""Layers and models built on :func:`polyattn.poly_attention`."""

from .attention import PolyAttention
from .cache import DecodeCache
from .transformer import PolyBlock, PolyTransformer

__all__ = ["PolyAttention", "PolyBlock", "PolyTransformer", "DecodeCache"]
