"""The package's layering: no import cycle between diffreid's subpackages, the toy package imported by nobody,
and no module reaching into another module's private names."""
import ast
import collections
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "diffreid"


def imports():
    """(subpackage, imported diffreid module, imported names) for every import, module level or inside functions."""
    for path in ROOT.rglob("*.py"):
        sub = path.relative_to(ROOT).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("diffreid."):
                yield sub, node.module, [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                yield from ((sub, a.name, []) for a in node.names if a.name.startswith("diffreid."))


def test_no_import_cycle_between_subpackages():
    edges = collections.defaultdict(set)
    for sub, module, _ in imports():
        target = module.split(".")[1]
        if target != sub:
            edges[sub].add(target)

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in edges.get(start, ()))

    cycles = sorted(s for s in list(edges) if reaches(s, s))
    assert not cycles, {s: sorted(edges[s]) for s in cycles}
    assert not [s for s in edges if "toy" in edges[s] and s != "toy"], "the toy package is imported by nobody"


def test_no_private_names_imported_from_another_module():
    private = [(sub, module, name) for sub, module, names in imports() for name in names
               if name.startswith("_") and not name.startswith("__")]
    assert not private, private
