"""Parse untrusted YAML recipes safely: size, node and alias-expansion limits, one-line errors.

`yaml.safe_load` already refuses Python objects, but a few kilobytes of nested aliases ("billion laughs")
expand into billions of values the moment anything walks the result, and a 50 MB recipe takes minutes and
gigabytes to compose. Here the text size is checked before parsing, the composed node graph is measured
with aliases expanded (memoised per node, so the measurement itself stays linear) before anything is
constructed, and the numbers YAML 1.1 reads as strings (`1e-5`, which mergekit users write) are read as
floats, as YAML 1.2 and mergekit do.
"""

from __future__ import annotations

import re

import yaml

from merging.errors import RecipeError

MAX_BYTES = 1 << 20  # 1 MiB: the largest real mergekit config is a few KB
MAX_NODES = 200_000  # YAML nodes after alias expansion
MAX_DEPTH = 64


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads exponent numbers without a dot (`1e-5`, `5E3`) as floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _expanded_size(root: yaml.Node) -> int:
    """Number of nodes the document has once every alias is expanded; refuses recursion and depth."""
    memo: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in memo:
            return memo[key]
        if key in active:
            raise RecipeError("recipe YAML has a recursive alias (an anchor that contains itself)")
        if depth > MAX_DEPTH:
            raise RecipeError(f"recipe YAML is nested deeper than {MAX_DEPTH} levels")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                total += size(child, depth + 1)
                if total > MAX_NODES:
                    break
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                total += size(k, depth + 1) + size(v, depth + 1)
                if total > MAX_NODES:
                    break
        active.discard(key)
        memo[key] = total
        return total

    return size(root, 0)


def load_yaml(text: str | bytes, *, what: str = "recipe", max_bytes: int = MAX_BYTES):
    """Parse one YAML document within the limits; every failure is a one-line RecipeError."""
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > max_bytes:
        raise RecipeError(
            f"{what} YAML is {len(raw) / 1e6:.1f} MB, over the {max_bytes // 1024} KiB limit for a recipe"
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise RecipeError(f"{what} YAML is not UTF-8 text") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        n = _expanded_size(node)
        if n > MAX_NODES:
            raise RecipeError(
                f"{what} YAML expands to more than {MAX_NODES:,} values (nested aliases?); refused"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"broken YAML in {what}{where}: {problem}") from None
    except RecursionError:
        raise RecipeError(f"{what} YAML is nested too deeply") from None
    finally:
        loader.dispose()
