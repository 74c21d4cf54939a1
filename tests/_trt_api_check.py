"""Run by tests/test_tensorrt_runtime.py in its own process, with PYTHONPATH at one version's real TensorRT lean
bindings: which attributes (argv[1], {class or "module": dotted paths}) and call arities (argv[2],
{"Class.method": argument counts}) the TensorRT runners use that the real ``tensorrt_lean`` lacks. Prints one
JSON line: version, missing, arity (mismatches) and names (every attribute of the three runtime classes)."""

from __future__ import annotations

import json
import sys

import tensorrt_lean as trt


def missing(used: dict[str, list[str]]) -> list[str]:
    out = []
    for cls, paths in used.items():
        for path in paths:
            obj = trt if cls == "module" else getattr(trt, cls)
            for part in path.split("."):
                if not hasattr(obj, part):
                    out.append(f"{cls}.{path}")
                    break
                obj = getattr(obj, part)
    return sorted(out)


def _params(line: str) -> list[str]:
    """The parameters of one pybind11 signature line ``name(self: T, a: T, b: T = 0) -> R``, self dropped."""
    inner = line[line.index("(") + 1:line.rindex("->")].rstrip().removesuffix(")")
    params, cur, depth = [], "", 0
    for ch in inner:
        depth += 1 if ch in "[(" else -1 if ch in "])" else 0
        if ch == "," and depth == 0:
            params.append(cur)
            cur = ""
        else:
            cur += ch
    return [p for p in [*params, cur] if p.strip() and not p.strip().startswith("self")]


def arities(doc: str) -> list[tuple[int, int]]:
    """(min, max) argument counts of each signature (overload) in a pybind11 docstring."""
    out = []
    for line in doc.splitlines():
        line = line.split(". ", 1)[1] if line[:1].isdigit() else line
        if "(" in line and "->" in line:
            params = _params(line)
            out.append((sum("=" not in p for p in params), len(params)))
    return out


def arity_mismatches(calls: dict[str, list[int]]) -> list[str]:
    bad = []
    for name, counts in calls.items():
        cls, method = name.split(".")
        sigs = arities(getattr(getattr(trt, cls), method).__doc__ or "")
        bad += [f"{name} with {n} args (signatures {sigs})" for n in counts if not any(lo <= n <= hi for lo, hi in sigs)]
    return bad


def main() -> None:
    names = set().union(*(dir(c) for c in (trt.Runtime, trt.ICudaEngine, trt.IExecutionContext)))
    print(json.dumps({"version": trt.__version__, "missing": missing(json.loads(sys.argv[1])),
                      "arity": arity_mismatches(json.loads(sys.argv[2])), "names": sorted(names)}))


if __name__ == "__main__":
    main()
