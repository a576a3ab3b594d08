"""KV-cache quantization kernels: the torch reference that defines each scheme, and Triton kernels
that match it bit for bit on the stored codes (``backend="triton"``).

Installed as ``kvsafety_tests.kernels`` (PyPI already has a distribution named ``kernels``).
"""

from .api import AUTO_CPU, BACKENDS, Backend, dequantize, implementation, quantize, resolve_kernels
from .fp8_ref import FP8_DTYPES, FP8_MAX, fp8_decode, fp8_encode
from .int_ref import group_view
from .packing import pack_codes, packed_width, unpack_codes
from .rounding import bf16_round_down, bf16_round_up
from .stored import MAX_ABS, NonFiniteError, QuantizedTensor, check_input
from .stream import QuantizedStream

__all__ = [
    "AUTO_CPU",
    "BACKENDS",
    "FP8_DTYPES",
    "FP8_MAX",
    "MAX_ABS",
    "Backend",
    "NonFiniteError",
    "QuantizedStream",
    "QuantizedTensor",
    "bf16_round_down",
    "bf16_round_up",
    "check_input",
    "dequantize",
    "fp8_decode",
    "fp8_encode",
    "group_view",
    "implementation",
    "pack_codes",
    "packed_width",
    "quantize",
    "resolve_kernels",
    "unpack_codes",
]
