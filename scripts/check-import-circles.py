#!/usr/bin/env python3
"""Finds import circles between the modules of each crate: module A names
`crate::B…` (or B through `super::…`) and B names A, directly or through other
modules. A module's own ancestors and descendants do not count.

    scripts/check-import-circles.py [repository root]
"""
import re
import sys
from pathlib import Path


def module_of(src: Path, file: Path) -> tuple:
    """`src/a/b.rs` and `src/a/b/mod.rs` are `("a", "b")`; `lib.rs` is `()`."""
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip_comments(text: str) -> str:
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def split_top_level(body: str) -> list:
    """Splits `a, b::{c, d}` at the commas outside braces."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(body[start:i])
            start = i + 1
    items.append(body[start:])
    return [item for item in items if item.strip()]


def use_paths(tree: str, prefix: list) -> list:
    """Expands the use tree `a::{b, c::{d}}` into `[a, b]` and `[a, c, d]`."""
    tree = tree.strip()
    braces = re.match(r"^([\w:]*?)::\{(.*)\}$", tree, re.S)
    if not braces:
        return [prefix + [p for p in tree.split(" as ")[0].strip().split("::") if p]]
    head = [p for p in braces.group(1).split("::") if p]
    return [path for item in split_top_level(braces.group(2)) for path in use_paths(item, prefix + head)]


def edges_of(modules: dict) -> dict:
    """For each module, the other modules it names (not counting its own ancestors and descendants)."""
    edges = {}
    for module, file in modules.items():
        text = strip_comments(file.read_text())
        paths = [p for m in re.finditer(r"\buse\s+([^;]+);", text) for p in use_paths(m.group(1), [])]
        paths += [m.group(1).split("::") for m in re.finditer(r"\b((?:crate|super)(?:::\w+)+)", text)]
        edges[module] = set()
        for path in paths:
            if not path or path[0] not in ("crate", "super"):
                continue
            target, rest = ((), path[1:]) if path[0] == "crate" else (module, path)
            while rest and rest[0] == "super":
                target, rest = target[:-1], rest[1:]
            for segment in rest:
                if target + (segment,) not in modules:
                    break
                target += (segment,)
            related = target[: len(module)] == module or module[: len(target)] == target
            if not related:
                edges[module].add(target)
    return edges


def circles(edges: dict) -> list:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
    status = 0
    for src in sorted(root.glob("crates/*/src")):
        modules = {module_of(src, f): f for f in sorted(src.rglob("*.rs"))}
        for component in circles(edges_of(modules)):
            names = " <-> ".join("::".join(m) for m in component)
            print(f"import circle in crates/{src.parent.name}: {names}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
