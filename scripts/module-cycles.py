#!/usr/bin/env python3
"""Fails when the crate's modules import each other in a circle.

Every file under src/ is a module (`src/a/b.rs` and `src/a/b/mod.rs` are `a::b`). An edge runs
from a module to each module whose items it names (`crate::x::y`, `super::y`, `use` groups
included). A module and its own ancestors or descendants are one unit and make no edge: a
parent declares its children, and children use what their parent defines. Every other cycle
is printed, and the exit status is 1.
"""

import re
import sys
from pathlib import Path

SRC = Path(sys.argv[1] if len(sys.argv) > 1 else "src")
# Binaries import the library as `ferroserve::`; they are roots, never inside a cycle.
ROOTS = {"main.rs", "lib.rs"}


def module_of(path: Path) -> tuple:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "mod":
        parts.pop()
    return tuple(parts)


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return re.sub(r"//[^\n]*", "", text)


def split_top(text: str) -> list:
    """Splits `a, b::{c, d}, e` at the commas outside braces."""
    items, depth, current = [], 0, ""
    for ch in text:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    return [i.strip() for i in items + [current] if i.strip()]


def expand(path: str) -> list:
    """`a::{b, c::{d, e}}` -> ["a::b", "a::c::d", "a::c::e"]."""
    head, sep, rest = path.partition("{")
    if not sep:
        return [path]
    inner = rest[: rest.rindex("}")]
    return [p for item in split_top(inner) for p in expand(head + item)]


def references(text: str) -> list:
    refs = []
    for m in re.finditer(r"\buse\s+((?:crate|super|self)\b[^;]*);", text):
        refs += expand(re.sub(r"\s+", "", m.group(1)))
    refs += re.findall(r"\b(?:crate|super)(?:::\w+)+", text)
    return refs


def resolve(module: tuple, ref: str, modules: set):
    parts = re.sub(r"\s+", "", ref).split("::")
    base = list(module)
    if parts[0] == "crate":
        base, parts = [], parts[1:]
    elif parts[0] == "self":
        parts = parts[1:]
    while parts and parts[0] == "super":
        base, parts = base[:-1], parts[1:]
    path = base + [p for p in parts if p]
    for n in range(len(path), 0, -1):
        if tuple(path[:n]) in modules:
            return tuple(path[:n])
    return None


def related(a: tuple, b: tuple) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def main() -> int:
    files = [p for p in SRC.rglob("*.rs") if p.relative_to(SRC).as_posix() not in ROOTS]
    modules = {module_of(p) for p in files}
    edges = {m: set() for m in modules}
    for path in files:
        m = module_of(path)
        # Test modules may reach anywhere.
        text = strip_comments(path.read_text()).split("#[cfg(test)]")[0]
        for ref in references(text):
            target = resolve(m, ref, modules)
            if target and not related(m, target):
                edges[m].add(target)
    cycles, state, stack = [], {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == "open":
                cycles.append(stack[stack.index(t) :] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(modules):
        if m not in state:
            visit(m)
    for c in cycles:
        print("module cycle: " + " -> ".join("::".join(x) for x in c), file=sys.stderr)
    count = sum(len(e) for e in edges.values())
    print(f"modules: {len(modules)}, dependencies: {count}, cycles: {len(cycles)}")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
