# Type stubs for the C++ extension (python/hydraopt_py.cc). Every name and
# parameter here is checked against the built module by
# tests/python/test_stubs.py: keep the two in step.
import os
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

_Path = Union[str, "os.PathLike[str]"]
_F64 = npt.NDArray[np.float64]
_F32 = npt.NDArray[np.float32]

__version__: str

class Error(ValueError):
    """Bad input: the library's one-line message (file, tensor, reason)."""

class Adapter:
    def __init__(self, spec: _Path, skip_unmergeable: bool = False) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def dir(self) -> str: ...
    @property
    def base_model(self) -> str: ...
    @property
    def rank(self) -> int: ...
    @property
    def alpha(self) -> float: ...
    @property
    def use_rslora(self) -> bool: ...
    @property
    def fan_in_fan_out(self) -> bool: ...
    @property
    def dtype(self) -> str: ...
    @property
    def target_modules(self) -> List[str]: ...
    @property
    def params(self) -> int: ...
    @property
    def modules(self) -> List[Dict[str, Any]]:
        """Per module: name, in, out, rank, alpha, scale (PEFT scaling), dtype."""
    def load(self, module: str) -> Dict[str, Any]:
        """{'A': r x in, 'B': out x r (float64 copies), 'scale': s}; the update is s * B @ A."""

class Bundle:
    def __init__(self, path: _Path) -> None: ...
    @property
    def path(self) -> str: ...
    @property
    def tasks(self) -> List[str]: ...
    @property
    def modules(self) -> List[str]: ...
    @property
    def method(self) -> str: ...
    @property
    def base_model(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def params(self) -> int: ...
    @property
    def original_params(self) -> int: ...
    @property
    def report(self) -> Optional[Dict[str, Any]]:
        """merge()'s report (as `hydraopt merge --report` writes it), or add()'s / remove()'s;
        None for a bundle read from a file."""
    @property
    def plan(self) -> List[Dict[str, Any]]: ...
    def factors(self, module: str) -> Dict[str, Any]:
        """heads (out x k), cores, bodies (k' x in) as float64 arrays; head_of, core_of, body_of, scale per task."""
    def update(self, task: str, module: str) -> _F64:
        """The task's reconstructed update on the module, out x in, scaling included."""
    def export(self, dir: _Path, task: Optional[str] = None, dtype: Optional[str] = None) -> None: ...
    def task_adapter(self, task: str) -> Tuple[Dict[str, _F64], Dict[str, Any]]:
        """(state_dict, config): 'base_model.model.<module>.lora_A.weight' / '.lora_B.weight' arrays
        and adapter_config.json as a dict, as export() would write them."""
    def add(self, adapters: "_Adapters", output: Optional[_Path] = None, refit: Optional[str] = None,
            budget: Optional[float] = None, budget_bytes: Optional[int] = None, threads: int = 0,
            skip_unmergeable: bool = False) -> "Bundle":
        """A new Bundle with the adapters added, as `hydraopt add` (refit 'none', 'touched' or 'all')."""
    def remove(self, tasks: List[str], output: Optional[_Path] = None, refit: Optional[str] = None,
               budget: Optional[float] = None, budget_bytes: Optional[int] = None, threads: int = 0) -> "Bundle":
        """A new Bundle without the tasks, as `hydraopt remove` (refit 'none' or 'all')."""

class Model:
    def __init__(self, dir: _Path) -> None: ...
    @property
    def config(self) -> Dict[str, int]: ...
    def forward(self, tokens: List[int], adapter: Optional[Adapter] = None, bundle: Optional[Bundle] = None,
                task: Optional[str] = None) -> _F32: ...
    def encode_prompt(self, prompt: str) -> List[int]: ...

_Adapters = Iterable[Union[_Path, Adapter]]

def sweep(adapters: _Adapters, methods: Optional[List[str]] = None,
          budgets: List[float] = [0.05, 0.1, 0.2, 0.3, 0.4, 0.52, 0.6, 0.8, 1.0], share: str = "auto",
          weights: str = "balanced", groups: Optional[str] = None, threads: int = 0,
          dtype: Optional[str] = None, params: Optional[Dict[str, Any]] = None,
          skip_unmergeable: bool = False, unit: str = "params", calibration: Optional[str] = None,
          shrinkage: float = 0.3, calibration_rounds: int = 0) -> List[Dict[str, Any]]: ...
def merge(adapters: _Adapters, budget: Optional[float] = None, method: str = "hydraopt",
          budget_bytes: Optional[int] = None, share: str = "auto", weights: str = "balanced",
          groups: Optional[str] = None, plan: Optional[str] = None, threads: int = 0,
          dtype: Optional[str] = None, params: Optional[Dict[str, Any]] = None,
          output: Optional[_Path] = None, skip_unmergeable: bool = False, unit: str = "params",
          calibration: Optional[str] = None, shrinkage: float = 0.3,
          calibration_plan: str = "calibrated", calibration_rounds: int = 0) -> Bundle: ...
def inspect(adapters: _Adapters, skip_unmergeable: bool = False) -> Dict[str, Any]: ...
def export(bundle: _Path, dir: _Path, task: Optional[str] = None, dtype: Optional[str] = None) -> None: ...
def methods() -> List[Dict[str, Any]]: ...
