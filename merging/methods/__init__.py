"""Merge methods: per-tensor functions with parameter specs (methods.md §1-3).

Public face: `get_method`, `all_methods`, `resolve_params`, and the types of `base`.
"""

from merging.methods.base import MergeFn, MethodSpec, ParamCheck, ParamSpec, TensorInputs
from merging.methods.params import resolve_params
from merging.methods.registry import all_methods, get_method

__all__ = [
    "MergeFn",
    "MethodSpec",
    "ParamCheck",
    "ParamSpec",
    "TensorInputs",
    "all_methods",
    "get_method",
    "resolve_params",
]
