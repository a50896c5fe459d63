"""Compare two bundles for what they compute and declare, not for their bytes.

    python -m export.tools.compare_bundles engines/demo /tmp/other/demo

Two builds of the same checkpoint differ in a few bytes that carry no model: the build time,
the bundle's name, and the digests of files whose bytes differ only in node metadata (the
exporter's name scopes and module classes, which name the build side's module paths). Here:

* the file names must match;
* ONNX graphs are compared as protos (external weights loaded) after every node's
  ``metadata_props`` is dropped, and node names too where ``names=False``: ONNX Runtime's NCHWc
  pass numbers the nodes it adds (``ReorderOutput_token_106``) differently from run to run, in
  the CPU-optimised graphs (``*.cpu.onnx``), so those are compared without node names;
* ``constants.npz`` array by array (names, dtypes, shapes and values);
* the manifests after removing :data:`IGNORED` fields (dotted paths; ``*`` matches any key);
* every other file (TensorRT plans, weight files of the graphs) by bytes, except graph weight
  files, which are compared inside their graphs.

Exit status 0 when the bundles match, 1 with one line per difference.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

# build-specific fields: when it was built, what it is called, and the digests of files whose
# contents are compared here directly
IGNORED = (
    "name",
    "build.created",
    "graphs.*.sha256",
    "graphs.*.onnxruntime_cpu.sha256",
    "graphs.*.onnxruntime_cpu.data_sha256",
    "engines.*.sha256",
)


def _graph_proto(path: Path, names: bool = True):
    """The graph at ``path`` without node metadata (and without node names unless ``names``)."""
    import onnx

    model = onnx.load(str(path), load_external_data=True)
    for graph in _graphs(model):
        for node in graph.node:
            del node.metadata_props[:]
            if not names:
                node.name = ""
    return model


def _graphs(model) -> Iterator:
    """Every graph of ``model``: the main graph, subgraphs (If/Loop bodies), function bodies."""
    stack = [model.graph]
    for function in model.functions:
        for node in function.node:
            del node.metadata_props[:]
    while stack:
        graph = stack.pop()
        yield graph
        for node in graph.node:
            for attribute in node.attribute:
                stack.extend([attribute.g] if attribute.HasField("g") else [])
                stack.extend(attribute.graphs)


def _drop(tree: Any, path: list[str]) -> None:
    if not isinstance(tree, dict):
        return
    head, rest = path[0], path[1:]
    for key in [k for k in tree if fnmatch.fnmatchcase(k, head)]:
        if rest:
            _drop(tree[key], rest)
        else:
            del tree[key]


def _diff(a: Any, b: Any, where: str = "") -> Iterator[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            here = f"{where}.{key}" if where else key
            if key not in a or key not in b:
                yield f"manifest {here}: only in {'second' if key not in a else 'first'}"
            else:
                yield from _diff(a[key], b[key], here)
    elif a != b:
        yield f"manifest {where}: {json.dumps(a)[:80]} != {json.dumps(b)[:80]}"


def compare_manifests(a: dict, b: dict, ignored: tuple[str, ...] = IGNORED) -> list[str]:
    """The differences of two manifests outside ``ignored`` (dotted paths, ``*`` wildcards)."""
    a, b = json.loads(json.dumps(a)), json.loads(json.dumps(b))  # copies
    for field in ignored:
        _drop(a, field.split("."))
        _drop(b, field.split("."))
    return list(_diff(a, b))


def _compare_npz(a: Path, b: Path) -> list[str]:
    with np.load(a, allow_pickle=False) as za, np.load(b, allow_pickle=False) as zb:
        if sorted(za.files) != sorted(zb.files):
            return [f"{a.name}: arrays {sorted(za.files)} != {sorted(zb.files)}"]
        return [
            f"{a.name}: array {k} differs"
            for k in za.files
            if za[k].dtype != zb[k].dtype or za[k].shape != zb[k].shape or not np.array_equal(za[k], zb[k])
        ]


def compare_bundles(a: Path, b: Path, ignored: tuple[str, ...] = IGNORED) -> list[str]:
    """Every difference between the bundles in folders ``a`` and ``b`` (empty: they match)."""
    a, b = Path(a), Path(b)
    files_a = sorted(p.name for p in a.iterdir() if p.is_file())
    files_b = sorted(p.name for p in b.iterdir() if p.is_file())
    if files_a != files_b:
        return [
            f"files differ: only in first {sorted(set(files_a) - set(files_b))}, "
            f"only in second {sorted(set(files_b) - set(files_a))}"
        ]
    manifest_a = json.loads((a / "manifest.json").read_text())
    manifest_b = json.loads((b / "manifest.json").read_text())
    problems = compare_manifests(manifest_a, manifest_b, ignored)
    graph_data = {f"{name}.data" for name in files_a if name.endswith(".onnx")}
    for name in files_a:
        if name == "manifest.json" or name in graph_data:
            continue
        if name.endswith(".onnx"):
            names = not name.endswith(".cpu.onnx")
            if _graph_proto(a / name, names).SerializeToString() != _graph_proto(b / name, names).SerializeToString():
                problems.append(f"{name}: the graphs differ (node metadata{'' if names else ' and names'} aside)")
        elif name.endswith(".npz"):
            problems += _compare_npz(a / name, b / name)
        elif (a / name).read_bytes() != (b / name).read_bytes():
            problems.append(f"{name}: bytes differ")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("first", type=Path)
    p.add_argument("second", type=Path)
    p.add_argument(
        "--ignore", action="append", default=[], help="another manifest field to ignore (dotted, * wildcards)"
    )
    args = p.parse_args(argv)
    problems = compare_bundles(args.first, args.second, IGNORED + tuple(args.ignore))
    for line in problems:
        print(line)
    if not problems:
        print(f"{args.first} and {args.second} match (ignoring {', '.join(IGNORED + tuple(args.ignore))})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
