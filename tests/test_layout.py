"""The package layout: one ``kfm`` namespace, every sub-package installed, data flowing forward, no import circles."""

import ast
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"kfm": "kfm", "kfm.model": "model", "kfm.tokenizer": "tokenizer", "kfm.data_pipeline": "data_pipeline",
           "kfm.train": "train"}
TOP_LEVEL = ("model", "tokenizer", "data_pipeline", "train")


def modules() -> dict[str, Path]:
    """Every kfm module name and its file."""
    out = {}
    for pkg, folder in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([pkg, *parts])] = path
    return out


def imports_of(path: Path, name: str) -> set[str]:
    """Every kfm module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative import
                pkg = name.split(".")[: len(name.split(".")) - node.level + (path.name == "__init__.py")]
                base = ".".join([*pkg, node.module])
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    mods = modules()
    return {m for m in found if m in mods and m != name}


def test_every_sub_package_is_installed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert on_disk == listed, f"pyproject.toml [tool.setuptools] packages: add {on_disk - listed}, drop {listed - on_disk}"


def test_nothing_imports_the_old_top_level_names():
    offenders = []
    for folder in ("kfm", *TOP_LEVEL, "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                              if n.split(".")[0] in TOP_LEVEL]
    assert not offenders, f"import these as kfm.<...>: {offenders}"


def test_data_flows_forward():
    """tokenizer -> data_pipeline -> train; model imports none of the others (nor they the model, but train)."""
    shared = {"kfm.files", "kfm.schemas", "kfm.quiet"}  # kfm/'s own modules, for every package but the model
    allowed = {"kfm.model": {"kfm.model"}, "kfm.tokenizer": {"kfm.tokenizer", *shared},
               "kfm.data_pipeline": {"kfm.data_pipeline", "kfm.tokenizer", *shared},
               "kfm.train": {"kfm.train", "kfm.model", "kfm.data_pipeline", "kfm.tokenizer", *shared}}
    bad = []
    for name, path in modules().items():
        pkg = ".".join(name.split(".")[:2])
        for dep in imports_of(path, name):
            if ".".join(dep.split(".")[:2]) not in allowed.get(pkg, {pkg}) and dep != "kfm":
                bad.append(f"{name} -> {dep}")
    assert not bad, bad


def test_no_import_circles():
    """Module by module (lazy imports included), and between train's sub-packages."""
    mods = modules()
    graph = {name: {d for d in imports_of(path, name) if not name.startswith(d + ".")} for name, path in mods.items()}

    def find_cycle(g):
        state, stack = {}, []

        def visit(n):
            state[n] = "open"
            stack.append(n)
            for d in sorted(g.get(n, ())):
                if state.get(d) == "open":
                    return stack[stack.index(d):] + [d]
                if d not in state and (cycle := visit(d)):
                    return cycle
            stack.pop()
            state[n] = "done"
            return None

        for n in sorted(g):
            if n not in state and (cycle := visit(n)):
                return cycle
        return None

    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    sub = lambda m: ".".join(m.split(".")[:3])  # noqa: E731  kfm.train.<sub-package>
    packages = {}
    for name, deps in graph.items():
        if name.startswith("kfm.train."):
            packages.setdefault(sub(name), set()).update(sub(d) for d in deps
                                                         if d.startswith("kfm.train.") and sub(d) != sub(name))
    assert find_cycle(packages) is None, "train sub-packages: " + " -> ".join(find_cycle(packages))


def test_train_sub_packages_import_only_the_layers_below():
    """docs/architecture.md: config, optim -> checkpoint -> hf -> provenance -> parallel -> loop -> cli -> plan."""
    layers = ["config", "optim", "checkpoint", "hf", "provenance", "parallel", "loop", "cli", "plan"]
    rank = {name: i for i, name in enumerate(layers)}
    rank["optim"] = rank["config"]  # the same layer
    bad = []
    for name, path in modules().items():
        parts = name.split(".")
        if parts[:2] != ["kfm", "train"] or len(parts) < 3:
            continue
        for dep in imports_of(path, name):
            dparts = dep.split(".")
            if dparts[:2] == ["kfm", "train"] and len(dparts) > 2 and dparts[2] != parts[2] \
                    and rank[dparts[2]] > rank[parts[2]]:
                bad.append(f"{name} -> {dep}")
    assert not bad, bad
