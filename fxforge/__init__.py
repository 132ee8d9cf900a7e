"""fxforge: an ahead-of-time and just-in-time compiler for PyTorch models.

    import fxforge
    fast = fxforge.compile(model)            # JIT: a torch.compile backend
    aot = fxforge.compile_aot(model, (ids,))  # AOT: torch.export, one graph, dynamic dims
    aot.save("out/"); again = fxforge.load("out/")
    dec = fxforge.compile_decoder(model, max_length=256); dec.generate(ids, max_new_tokens=32)
"""

from fxforge.api import compile, compile_aot, compile_decoder, load
from fxforge.config import CompileConfig
from fxforge.errors import FxforgeError
from fxforge.progress import configure_logging
from fxforge.version import __version__

configure_logging()  # FXFORGE_LOGS=passes,codegen,... (see fxforge.progress.LOGS)

__all__ = ["compile", "compile_aot", "compile_decoder", "load", "CompileConfig", "FxforgeError", "__version__"]
