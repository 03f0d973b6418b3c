"""Layers run one way (issue 28 item 3): gnhub's import graph, top-level and function-level imports
alike (read with `ast`, never executed), has no cycle; every module sits in one layer of LAYERS
(the table docs/contributing.md shows) and imports nothing of a higher layer; and an import inside
a function says why it is there in a `# comment` (most keep torch or another heavy module out of
the torch-free commands), on its line or above its group of imports."""
from __future__ import annotations

import ast
import fnmatch
import importlib
import io
import re
import tokenize
from pathlib import Path

import pytest

import gnhub

# Lowest first. A module may import its own layer and the layers below it, never one above. The
# most specific pattern decides a module's layer (gnhub.frameworks.mmdet.convention is a model
# piece, the rest of gnhub.frameworks.mmdet torch-free facts).
LAYERS = [
    ("base", ["gnhub", "gnhub.errors", "gnhub.settings", "gnhub.stages", "gnhub.samples", "gnhub.rle",
              "gnhub.allocator", "gnhub.distributed", "gnhub.precision"]),
    ("schema", ["gnhub.config", "gnhub.frameworks", "gnhub.frameworks.*", "gnhub.zoo", "gnhub.published",
                "gnhub.report", "gnhub.images", "gnhub.draw", "gnhub.coco", "gnhub.panoptic_format",
                "gnhub.panoptic_merge", "gnhub.pq"]),
    ("files", ["gnhub.files", "gnhub.layout", "gnhub.unpickle", "gnhub.torchfile", "gnhub.checkpoint", "gnhub.source",
               "gnhub.converters", "gnhub.converters.*", "gnhub.weights"]),
    ("model", ["gnhub.modeling", "gnhub.modeling.*", "gnhub.frameworks.*.convention", "gnhub.frameworks.base",
               "gnhub.reference", "gnhub.reference.*"]),
    ("compare", ["gnhub.compare"]),
    ("pipeline", ["gnhub.verify", "gnhub.bfloat16_check", "gnhub.convert"]),
    ("sources", ["gnhub.download", "gnhub.hub", "gnhub.cache", "gnhub.resolve"]),
    ("api", ["gnhub.api", "gnhub.runtime", "gnhub.export"]),
    ("workflows", ["gnhub.checks", "gnhub.predict", "gnhub.evaluate", "gnhub.train", "gnhub.train.*",
                   "gnhub.cards", "gnhub.publish", "gnhub.demo", "gnhub.info"]),
    ("cli", ["gnhub.cli", "gnhub.__main__"]),
]
LEVEL = {layer: i for i, (layer, _) in enumerate(LAYERS)}

ROOT = Path(gnhub.__file__).parent
CONVERTERS = Path(importlib.import_module("gnhub.converters").__file__).parent  # installed as gnhub.converters


def _files() -> dict[str, Path]:
    files = {}
    for package, folder in (("gnhub", ROOT), ("gnhub.converters", CONVERTERS)):
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            files[name] = path
    return files


FILES = _files()


def layer_of(module: str) -> str | None:
    found = [(len(p), layer) for layer, patterns in LAYERS for p in patterns if fnmatch.fnmatchcase(module, p)]
    return max(found)[1] if found else None


def _target(module: str, is_package: bool, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The gnhub modules an import statement loads (a name imported from a package counts as its
    submodule where there is one)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[:len(base) - node.level + 1]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in FILES else prefix for a in node.names]
    out = []
    for name in names:
        while name and name not in FILES and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in FILES and name != module:
            out.append(name)
    return out


def _comments(source: str) -> dict[int, str]:
    return {t.start[0]: t.string for t in tokenize.generate_tokens(io.StringIO(source).readline)
            if t.type == tokenize.COMMENT}


def _reason(comment: str | None) -> bool:
    """A comment that says something beyond a bare `# noqa: CODE`."""
    if not comment:
        return False
    text = re.sub(r"^noqa(:\s*[A-Z]+[0-9]+(\s*,\s*[A-Z]+[0-9]+)*)?", "", comment.lstrip("#").strip())
    return any(c.isalpha() for c in text)


def _scan():
    """(edges {module: {target: [(line, inside a function)]}}, function-level imports without a reason)."""
    edges, unexplained = {}, []
    for module, path in FILES.items():
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        lines = source.splitlines()
        comments = _comments(source)
        import_lines: set[int] = set()
        inner = []
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner += [n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
        for n in ast.walk(tree):
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                import_lines.update(range(n.lineno, n.end_lineno + 1))
        inner_ids = {id(n) for n in inner}
        for n in ast.walk(tree):
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                for target in _target(module, path.name == "__init__.py", n):
                    edges.setdefault(module, {}).setdefault(target, []).append((n.lineno, id(n) in inner_ids))
        for n in inner:
            if any(_reason(comments.get(i)) for i in range(n.lineno, n.end_lineno + 1)):
                continue
            i = n.lineno - 1  # up over the imports (and blank lines) of its group to a comment line
            while i >= 1 and (i in import_lines or not lines[i - 1].strip()):
                if _reason(comments.get(i)) and i not in import_lines:
                    break
                i -= 1
            if not (i >= 1 and lines[i - 1].strip().startswith("#") and _reason(comments.get(i))):
                unexplained.append(f"{path.relative_to(ROOT.parent)}:{n.lineno}: {ast.unparse(n)}")
    return edges, unexplained


EDGES, UNEXPLAINED = _scan()


def _cycles(edges) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's, iterative)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]
    for start in sorted(FILES):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, {}))))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, {})))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_module_is_in_one_declared_layer():
    assert len(FILES) > 60 and "gnhub.modeling.boxes" in FILES and "gnhub.converters.mmdet" in FILES
    assert [m for m in sorted(FILES) if layer_of(m) is None] == []
    patterns = [p for _, ps in LAYERS for p in ps]
    assert len(patterns) == len(set(patterns))
    assert [p for p in patterns if not any(fnmatch.fnmatchcase(m, p) for m in FILES)] == []  # no stale rows


def test_the_import_graph_has_no_cycle():
    assert _cycles(EDGES) == []


def test_no_module_imports_a_higher_layer():
    upward = [f"{m} ({layer_of(m)}) imports {t} ({layer_of(t)}) at line {line}"
              for m, targets in sorted(EDGES.items()) for t, uses in sorted(targets.items())
              for line, _ in uses if LEVEL[layer_of(t)] > LEVEL[layer_of(m)]]
    assert upward == []


def test_imports_inside_functions_say_why():
    assert UNEXPLAINED == []


@pytest.mark.parametrize("source, expected", [
    ("# torch: not for the torch-free commands", True), ("# noqa: F401 - registers the ONNX ops", True),
    ("# noqa: F401", False), ("#", False), (None, False),
])
def test_what_counts_as_a_reason(source, expected):
    assert _reason(source) is expected


def test_the_contributing_guide_shows_this_table():
    text = (ROOT.parent / "docs" / "contributing.md").read_text(encoding="utf-8")
    for layer, patterns in LAYERS:
        row = next((ln for ln in text.splitlines() if ln.startswith(f"| {layer} |")), None)
        assert row is not None, f"docs/contributing.md has no row for layer {layer}"
        shown = {p.strip("` ") for p in row.split("|")[2].split(",")}
        assert shown == set(patterns), (layer, shown ^ set(patterns))
