"""Checks the library's module graph: the process state (`src/state.rs`) and the HTTP
layer (`src/api/`) are in no import cycle, so domain code never depends on them through
the modules it uses.

Edges are `crate::<module>` paths outside comments, between top-level modules of `src/`.
Usage: python3 .ci/checks/modules.py [SRC_DIR]
"""
import collections
import os
import re
import sys

KEPT_OUT_OF_CYCLES = {"state", "api"}


def graph(root):
    edges = collections.defaultdict(set)
    for directory, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(directory, name)
            module = os.path.relpath(path, root).split(os.sep)[0].removesuffix(".rs")
            if module in ("lib", "main"):
                continue
            with open(path, encoding="utf-8") as f:
                code = "\n".join(line for line in f if not line.strip().startswith("//"))
            for dep in re.findall(r"crate::([a-z_]+)", code):
                if dep != module:
                    edges[module].add(dep)
    return edges


def cycles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "src"
    edges = graph(root)
    bad = [c for c in cycles(edges) if KEPT_OUT_OF_CYCLES & set(c)]
    for component in bad:
        print(f"modules.py: an import cycle runs through {sorted(KEPT_OUT_OF_CYCLES & set(component))}:")
        for module in component:
            print(f"  {module} -> {sorted(d for d in edges[module] if d in component)}")
    if bad:
        sys.exit(1)
    print("modules.py: state and api are in no import cycle")


if __name__ == "__main__":
    main()
