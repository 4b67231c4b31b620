"""Model file formats: rwkv.cpp .bin (read), more in later modules."""
from .ggml_types import QUANTIZED_TYPES, TYPES_BY_NAME, GGMLType, dequantize, ggml_type
from .rwkvcpp import RwkvCppFile, TensorInfo, open_bin

__all__ = ["GGMLType", "QUANTIZED_TYPES", "RwkvCppFile", "TYPES_BY_NAME", "TensorInfo",
           "dequantize", "ggml_type", "open_bin"]
