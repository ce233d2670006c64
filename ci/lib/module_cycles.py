#!/usr/bin/env python3
"""Finds import cycles between sibling modules of the crate in src/.

Every module subtree is one node at its level: `issuer::serve::api` and `issuer::serve::page`
are siblings, and so are `issuer` and `desktop`. An edge A -> B means some file under A names a
path under B (`use crate::…`, `use super::…`, or a `crate::…` path inline). A parent naming its
children (module declarations, re-exports, a backend registry) is not between siblings and is
not counted. Prints each cycle and exits 1 if there is one.
"""
import os
import re
import sys

SRC = sys.argv[1] if len(sys.argv) > 1 else "src"


def module_of(path):
    rel = os.path.relpath(path, SRC)[:-3]  # strip .rs
    parts = rel.split(os.sep)
    if parts[0] == "bin":
        return None
    if parts[-1] in ("lib", "mod"):
        parts = parts[:-1]
    return tuple(parts)


files = {}
for root, _, names in os.walk(SRC):
    for n in names:
        if n.endswith(".rs"):
            m = module_of(os.path.join(root, n))
            if m is not None:
                files[m] = open(os.path.join(root, n), encoding="utf-8").read()

PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def targets(mod, text):
    # Only code: drop line comments (doc comments name paths too).
    code = "\n".join(l.split("//", 1)[0] for l in text.splitlines())
    for head, tail in PATH.findall(code):
        segs = tail.strip(":").split("::")
        if head == "crate":
            base = ()
        elif head == "self":
            base = mod
        else:
            base = mod[:-1]
            while segs and segs[0] == "super":
                base, segs = base[:-1], segs[1:]
        full = base + tuple(segs)
        # The deepest module this path points into.
        while full and full not in files:
            full = full[:-1]
        yield full


edges = set()
for mod, text in files.items():
    for tgt in targets(mod, text):
        # The sibling subtrees involved: the first segment where the two paths differ.
        common = 0
        while common < min(len(mod), len(tgt)) and mod[common] == tgt[common]:
            common += 1
        if common < len(mod) and common < len(tgt):
            edges.add((mod[: common + 1], tgt[: common + 1]))

graph = {}
for a, b in edges:
    graph.setdefault(a, set()).add(b)

cycles = []
state = {}


def visit(node, stack):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
        if state.get(nxt) == "open":
            cycles.append(stack[stack.index(nxt):] + [nxt])
        elif nxt not in state:
            visit(nxt, stack)
    stack.pop()
    state[node] = "done"


for node in sorted(graph):
    if node not in state:
        visit(node, [])

for c in cycles:
    print("import cycle: " + " -> ".join("::".join(m) for m in c))
sys.exit(1 if cycles else 0)
