"""polyattn: poly-attention — higher-order attention from an attention polynomial.

>>> import torch, polyattn
>>> q = [torch.randn(2, 16, 8) for _ in range(3)]
>>> v = [torch.randn(2, 16, 8) for _ in range(2)]
>>> polyattn.poly_attention("x1*x2 + x2*x3", q, v).shape
torch.Size([2, 16, 8])
"""

import sys as _sys

from .errors import MethodError, PolyAttentionError, PolynomialSyntaxError, ReferenceSizeError
from .functional import key_padding_masks, plan_for, poly_attention
from .nn import DecodeCache, PolyAttention, PolyTransformer
from .planning import Plan, plan
from .planning.decode import decode_support
from .polynomial import AttentionPolynomial, parse
from .theory import analyze, constructions

__version__ = "0.1.0"

# ``import polyattn.constructions`` resolves to polyattn.theory.constructions (DESIGN §4 name)
_sys.modules.setdefault(__name__ + ".constructions", constructions)

__all__ = [
    "AttentionPolynomial",
    "DecodeCache",
    "MethodError",
    "Plan",
    "PolyAttention",
    "PolyTransformer",
    "PolyAttentionError",
    "PolynomialSyntaxError",
    "ReferenceSizeError",
    "analyze",
    "constructions",
    "decode_support",
    "key_padding_masks",
    "parse",
    "plan",
    "plan_for",
    "poly_attention",
    "__version__",
]
