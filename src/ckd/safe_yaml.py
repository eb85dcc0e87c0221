"""YAML for configs and overrides: PyYAML's safe loader with limits and two corrections.

- **Limits.** A document may nest at most :data:`MAX_DEPTH` levels and hold at most
  :data:`MAX_NODES` nodes once its aliases are expanded (each ``*alias`` counts as a copy of
  what it names), so a few hundred bytes of nested aliases (a "billion laughs" bomb) or a
  document nested 20,000 deep is refused at once instead of exhausting memory, the stack or the
  terminal. Recursive aliases are refused too.
- **Duplicate keys** in a mapping are refused (YAML forbids them; PyYAML keeps the last).
- **YAML 1.2 floats.** ``1e-3`` and ``1.0e5`` are floats (YAML 1.1, PyYAML's default, reads them
  as strings since it wants a dot and a signed exponent).

Every refusal is a one-line :class:`~ckd.errors.ConfigError` naming where and, when known, the
line.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ckd.errors import ConfigError, cut, show

#: Deepest nesting of mappings and lists accepted (a config needs 4 or 5).
MAX_DEPTH = 64
#: Most nodes of a document, aliases expanded (a config holds about a hundred).
MAX_NODES = 100_000

# YAML 1.2 core schema floats that YAML 1.1 does not have (e.g. 1e-3); integers stay integers
# because PyYAML's int resolver is tried first.
_FLOAT_12 = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")


class _Limit(Exception):
    """A limit was passed; carries the one-line reason and the mark of the node."""

    def __init__(self, reason: str, mark: Any = None) -> None:
        super().__init__(reason)
        self.reason, self.mark = reason, mark


class ConfigLoader(yaml.SafeLoader):
    """:class:`yaml.SafeLoader` with the limits, the duplicate-key check and YAML 1.2 floats."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Limit(f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            if self._nodes > MAX_NODES:
                raise _Limit(f"more than {MAX_NODES:,} nodes", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: Node) -> Any:
        _check_expanded(node)
        return super().construct_document(node)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            first: dict[Any, Node] = {}
            for key_node, _ in node.value:
                if (
                    not isinstance(key_node, ScalarNode)
                    or key_node.tag == "tag:yaml.org,2002:merge"
                ):
                    continue
                key = self.construct_object(key_node)
                try:
                    seen = first.setdefault(key, key_node)
                except TypeError:  # unhashable: PyYAML reports it below
                    continue
                if seen is not key_node:
                    raise _Limit(
                        f"duplicate key {show(key)} (first at line {seen.start_mark.line + 1})",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def _check_expanded(root: Node) -> None:
    """Refuse a node graph whose alias-expanded size or depth passes the limits, or that
    contains itself (iteratively, each shared node visited once)."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[key] > MAX_NODES:
                raise _Limit(
                    f"expands to more than {MAX_NODES:,} nodes (aliases counted as copies)",
                    node.start_mark,
                )
            if depth[key] > MAX_DEPTH:
                raise _Limit(f"nested deeper than {MAX_DEPTH} levels", node.start_mark)
            continue
        if key in size:
            continue
        if key in on_path:
            raise _Limit("an alias refers to a node that contains it", node.start_mark)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_yaml(text: str, where: str) -> Any:
    """The one document in ``text``.

    Raises:
        ConfigError: a limit passed, a duplicate key or a value PyYAML cannot build (e.g. an
            integer of more than 4,300 digits), naming ``where`` and the line.
        yaml.YAMLError: invalid YAML syntax (callers report or tolerate it).
    """
    try:
        return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except _Limit as e:
        raise ConfigError(f"{where}{_at(e.mark)}: {e.reason}") from None
    except (ValueError, OverflowError, RecursionError) as e:
        raise ConfigError(f"{where}: a value YAML cannot read: {cut(str(e))}") from None


def describe_yaml_error(error: yaml.YAMLError) -> str:
    """`` at line N: what is wrong`` for a syntax error, on one line."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or getattr(error, "reason", None)
    if problem is None:
        problem = next((ln for ln in str(error).splitlines() if ln.strip()), type(error).__name__)
    return f"{_at(mark)}: {cut(' '.join(str(problem).split()))}"


def _at(mark: Any) -> str:
    return f" at line {mark.line + 1}" if mark is not None else ""
