"""Export: GGUF through llama.cpp's own converter (verified after writing), and an Ollama Modelfile.

    python -m krishna_ai export fetch-converter                       # once: ~75 MB from PyPI, keeps ~3 MB
    python -m krishna_ai export gguf --model merged/krishna-light --out krishna-light.f16.gguf
    python -m krishna_ai export modelfile --persona krishna --gguf krishna-light.f16.gguf --out Modelfile

- gguf:       find or fetch llama.cpp's converter, and `convert_gguf`
- gguf_check: `verify_gguf`, which reads a GGUF back and compares it with its source folder
- ollama:     the Modelfile (Gemma's turn template, the persona's system part and sampling)
"""

from krishna_ai.export.gguf import (
    CONVERTER,
    LLAMA_CPP_ENV,
    LLAMA_CPP_PYTHON_SHA256,
    LLAMA_CPP_PYTHON_VERSION,
    OUTTYPES,
    SOURCE_MARKER,
    convert_gguf,
    converter_cache,
    extract_converter,
    fetch_converter,
    find_converter,
    is_converter,
)
from krishna_ai.export.gguf_check import GGUFReport, verify_gguf
from krishna_ai.export.ollama import DEFAULT_NUM_CTX, OLLAMA_TEMPLATE, modelfile_text, write_modelfile

__all__ = [
    "CONVERTER", "DEFAULT_NUM_CTX", "LLAMA_CPP_ENV", "LLAMA_CPP_PYTHON_SHA256", "LLAMA_CPP_PYTHON_VERSION",
    "OLLAMA_TEMPLATE", "OUTTYPES", "SOURCE_MARKER", "GGUFReport", "converter_cache", "convert_gguf",
    "extract_converter", "fetch_converter", "find_converter", "is_converter", "modelfile_text", "verify_gguf",
    "write_modelfile",
]
