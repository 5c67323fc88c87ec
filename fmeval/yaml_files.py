"""Reading the user's YAML files (protocols, studies, prompt banks): one line per failure, naming the file.

They fail the same ways (missing, unreadable, not UTF-8, not YAML, not a
mapping, a field pydantic rejects), so they share the wording; each passes
its own error class so the CLI maps it to exit 2.

Every one is read by :func:`load_yaml`, PyYAML's safe loader plus three
refusals PyYAML does not make: a duplicate key (PyYAML keeps the last value
silently), an alias that refers to itself (a recursive structure every later
step trips over), and aliases that expand past :data:`MAX_EXPANDED_NODES`
(a "billion laughs" document is a few hundred bytes and expands to 10^9
nodes the moment anything walks it: hashing a study's settings did).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

#: The most nodes a document may expand to once aliases are followed (real study,
#: protocol and prompt files have a few hundred to a few thousand).
MAX_EXPANDED_NODES = 100_000


class YamlRefused(yaml.YAMLError):
    """A YAML document this package refuses to read (the message says why, with its line)."""


def _at(node: yaml.Node) -> str:
    mark = node.start_mark
    return f"line {mark.line + 1}, column {mark.column + 1}"


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key: the base class says so
                    break
                if duplicate:
                    raise YamlRefused(f"duplicate key {key!r} at {_at(key_node)}")
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                        lambda loader, node: loader.construct_mapping(node))


def _check_expansion(root: yaml.Node, limit: int) -> None:
    """Refuse a node graph with a cycle (a recursive alias) or more than ``limit`` nodes expanded.

    Iterative, memoised per node: an alias is the same node object reached
    twice, so each node is sized once however often it is referred to.
    """
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        nid = id(node)
        if children_done:
            on_path.discard(nid)
            kids = _children(node)
            total = 1 + sum(size[id(k)] for k in kids)
            if total > limit:
                raise YamlRefused(f"aliases expand past {limit:,} nodes (at {_at(node)}); "
                                  "write the values out instead")
            size[nid] = total
            continue
        if nid in size:
            continue
        if nid in on_path:
            raise YamlRefused(f"recursive alias at {_at(node)}")
        on_path.add(nid)
        stack.append((node, True))
        for kid in _children(node):
            if id(kid) in on_path:
                raise YamlRefused(f"recursive alias at {_at(kid)}")
            if id(kid) not in size:
                stack.append((kid, False))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_yaml(text: str, *, max_nodes: int = MAX_EXPANDED_NODES) -> Any:
    """One YAML document, safely: raises :class:`YamlRefused` (a ``yaml.YAMLError``) for a
    duplicate key, a recursive alias or an alias expansion past ``max_nodes``."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, max_nodes)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_mapping(path: Path, what: str, error: type[Exception], shape: str) -> dict:
    """The top-level mapping of a YAML file; ``what`` names the kind ("protocol", "study file")."""
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} {path} not found.") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}.") from None
    except UnicodeDecodeError:
        raise error(f"cannot read {what} {path}: not UTF-8 text.") from None
    except YamlRefused as exc:
        raise error(f"{what} {path} refused: {exc}.") from None
    except yaml.YAMLError as exc:
        raise error(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise error(f"{what} {path} must be a mapping {shape}.")
    return data


def first_error(err: ValidationError) -> str:
    """Pydantic's report cut to its first problem: 'where: what'."""
    e = err.errors()[0]
    where = ".".join(str(p) for p in e["loc"]) or "file"
    return f"{where}: {e['msg']}"
