"""hydraopt: store many LoRA adapters of one LLM as shared + per-task factors.

    import hydraopt
    b = hydraopt.merge(["assets/adapters/spell-de", "assets/adapters/spell-fr"], budget=0.5)
    b.report["mean_rel_error"]; b.factors(b.modules[0])["bodies"][0]  # numpy
    state, config = b.task_adapter("spell-de")   # PEFT state dict + adapter_config, in memory
    b.export("out/spell-de", task="spell-de")

The classes and functions are the C++ extension's (`hydraopt._hydraopt`);
this package re-exports them, ships their type stubs and the `hydraopt`
command (`python -m hydraopt` or the console script).
"""
from ._hydraopt import Adapter, Bundle, Error, Model, __version__, export, inspect, merge, methods, sweep

__all__ = ["Adapter", "Bundle", "Error", "Model", "__version__", "export", "inspect", "merge", "methods",
           "sweep"]

# Reprs, help() and tracebacks name the public package, not the extension.
for _cls in (Adapter, Bundle, Error, Model):
    _cls.__module__ = __name__
del _cls
