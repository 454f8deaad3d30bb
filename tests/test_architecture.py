"""The layer rules of ARCHITECTURE.md, enforced on the source tree (AST, no imports executed):

* ``core``, ``engine``, ``gating`` never import solo-learn, Lightning or Hydra (not even lazily);
* nothing outside ``solo_sparse/binding`` imports solo-learn at module level, and only ``binding``
  and ``tools`` may import it at all (tools run solo-learn's scripts in subprocesses);
* only the Lightning binding (``solo_sparse/lightning``) imports Lightly, and it never imports solo-learn;
  the host-neutral core of both bindings (``binding/host.py``) imports neither, nor Lightning;
* each layer imports only the layers below it;
* no module outside ``plugins/`` names a plugin: no imports of ``solo_sparse_plugins`` (scripts/ included) and
  no plugin name as a string in the layers that consume plugins (core, binding, zoo, tools) nor in the layers
  plugins are built from (engine, families; gating only as a gate-kind tag, ``ss_gating = "fbs"``);
* consumers reach a plugin only through the contract, by no other route: they call no method that only a family
  defines (``route_eval``, ``sparsifier`` ...; ask ``Plugin.route_backbone`` ...) and read no plugin config key by
  name (``.get("every")``, ``getattr(c, "final_density")``: ask ``Plugin.dense_gradient_share`` ...);
* every plugin entry point has a config-group YAML and vice versa;
* inside ``tools`` the rooms keep their order: the CLI is imported by nothing, the benchmark (``tools/bench/``) only
  by the CLI, the IMP room (``tools/imp/``) only by the benchmark's rounds and the imp plugin, the shared tools
  (evaluation, runner, reports ...) import no room, and in ``bench/`` the suite, measurements and results import no
  other part of the harness;
* ``tests/`` mirrors the package: every test file sits in the folder of the layer it tests (or ``integration/``), with
  ``test_architecture.py`` alone at the root and no two test files of one name (pytest imports them by basename).
"""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "solo_sparse"
#: allowed solo_sparse sub-packages per layer (a layer may always import itself)
ALLOWED = {
    "core": {"core"},
    "engine": {"core", "engine"},
    "gating": {"core", "engine", "gating"},
    "families": {"core", "engine", "gating", "families"},
    "zoo": {"core", "engine", "gating", "zoo"},
    "binding": {"core", "engine", "gating", "families", "binding"},
    "tools": {"core", "engine", "gating", "families", "zoo", "tools"},
    "plugins": {"core", "engine", "gating", "families", "tools", "binding.objectives"},
    "lightning": {"core", "engine", "gating", "families", "binding.host", "lightning"},
}
FORBIDDEN_EVERYWHERE_BELOW_BINDING = ("solo", "lightning", "pytorch_lightning", "hydra", "lightly")
#: the host-neutral module both bindings share
HOST_NEUTRAL = PKG / "binding" / "host.py"


def _layer(path: Path) -> str:
    if path.parts[len(ROOT.parts)] == "plugins":
        return "plugins"
    rel = path.relative_to(PKG).parts
    return rel[0] if len(rel) > 1 else "root"


def _imports(tree: ast.AST):
    """(module name, top-level?) of every import in the file."""
    top = set(id(n) for n in getattr(tree, "body", []))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, id(node) in top
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "solo_sparse":     # from solo_sparse import zoo -> solo_sparse.zoo
                for a in node.names:
                    yield f"solo_sparse.{a.name}", id(node) in top
            else:
                yield node.module, id(node) in top


def _sources():
    for p in sorted([*PKG.rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]):
        yield p, ast.parse(p.read_text(), str(p))


@pytest.mark.parametrize("path,tree", list(_sources()), ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else "")
def test_layer_imports(path, tree):
    layer = _layer(path)
    for mod, top in _imports(tree):
        root = mod.split(".")[0]
        if layer in ("core", "engine", "gating", "families", "zoo", "plugins"):
            assert root not in FORBIDDEN_EVERYWHERE_BELOW_BINDING, f"{path}: imports {mod} ({layer} must not)"
        if layer == "tools" and root in ("solo", "lightning"):
            assert not top, f"{path}: imports {mod} at module level (tools run solo-learn lazily)"
        if root == "lightly":
            assert layer == "lightning", f"{path}: imports {mod}; only solo_sparse/lightning imports Lightly"
        if layer == "lightning":
            assert root != "solo", f"{path}: imports {mod}; the Lightning binding never imports solo-learn"
        if path == HOST_NEUTRAL:
            assert root not in ("solo", "lightly", "lightning", "pytorch_lightning"), \
                f"{path}: imports {mod}; the code both hosts share stays host-neutral"
        if root == "solo_sparse_plugins":
            assert layer == "plugins", f"{path}: imports the plugins package ({mod}); ask the registry instead"
        if root == "solo_sparse" and layer not in ("root", "binding"):
            sub = mod.split(".")[1] if mod.count(".") >= 1 else ""
            allowed = ALLOWED[layer]
            ok = sub in allowed or ".".join(mod.split(".")[1:3]) in allowed
            assert ok, f"{path}: {layer} imports {mod} (allowed: {sorted(allowed)})"


def _plugin_names():
    setup = (ROOT / "setup.py").read_text()
    return set(re.findall(r'"([a-z_]+) = solo_sparse_plugins\.', setup))


def _strings(tree):
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node.value


CONSUMERS = ("core", "binding", "zoo", "tools", "root", "lightning")


def test_no_consumer_module_names_a_plugin():
    names = _plugin_names()
    assert {"gmp", "synccp", "cdg", "dgnet_dual", "imp"} <= names
    for path, tree in _sources():
        if _layer(path) not in (*CONSUMERS, "engine", "families", "gating"):
            continue
        tags = set()
        if _layer(path) == "gating":     # a gated backbone's gate-kind tag (ss_gating) may read like a plugin name
            tags = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign)
                    and any(isinstance(tg, ast.Attribute) and tg.attr == "ss_gating" for tg in n.targets)}
        docs = set(_strings(tree))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names \
                    and node.value in docs and id(node) not in tags:
                raise AssertionError(f"{path}:{node.lineno}: names plugin {node.value!r}; use a capability of the "
                                     "Plugin class")


def test_scripts_ask_the_registry_not_the_plugins_package():
    for path in sorted((ROOT / "scripts").rglob("*.py")):
        for mod, _ in _imports(ast.parse(path.read_text(), str(path))):
            assert mod.split(".")[0] != "solo_sparse_plugins", f"{path}: imports {mod}; ask the registry instead"


def _plugin_classes(tree):
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(isinstance(b, ast.Name) and b.id.endswith("Plugin")
                                                  for b in node.bases):
            yield node


def _family_only_methods():
    """Public methods the families define on their plugin classes that the Plugin contract does not have."""
    contract = {b.name for n in ast.parse((PKG / "core" / "plugin.py").read_text()).body
                if isinstance(n, ast.ClassDef) and n.name == "Plugin" for b in n.body if isinstance(b, ast.FunctionDef)}
    out = set()
    for f in (PKG / "families").glob("*.py"):
        for c in _plugin_classes(ast.parse(f.read_text())):
            out |= {b.name for b in c.body if isinstance(b, ast.FunctionDef) and not b.name.startswith("_")}
    return out - contract


#: family method names that are also other objects' APIs consumers call (PIL's Image.convert, a bench suite's window)
OTHER_APIS = {"convert", "window"}


def test_consumers_call_no_family_only_method():
    family = _family_only_methods()
    assert {"route_eval", "update_masks"} <= family      # the check sees them
    family -= OTHER_APIS
    for path, tree in _sources():
        if _layer(path) not in CONSUMERS:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in family | {"sparsifier"}:
                raise AssertionError(f"{path}:{node.lineno}: .{node.attr} exists only on a family of plugins; ask "
                                     "the Plugin contract (solo_sparse.core.plugin) instead")


#: config key names that are also the tools' own words (a row's density or seed, a suite window's start/end, ...)
GENERIC_KEYS = {"density", "seed", "start", "end", "warmup", "num_crops"}


def _config_keys():
    keys = set()
    for f in [*(ROOT / "plugins").glob("*.py"), *(PKG / "families").glob("*.py")]:
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.ClassDef) and node.name.endswith("Config"):
                keys |= {b.target.id for b in node.body if isinstance(b, ast.AnnAssign) and isinstance(b.target, ast.Name)
                         and b.target.id.islower()}     # fields, not class constants
    return keys - GENERIC_KEYS


def test_consumers_read_no_plugin_config_key_by_name():
    keys = _config_keys()
    assert {"every", "final_density", "csi_rule", "target"} <= keys
    for path, tree in _sources():
        if _layer(path) not in CONSUMERS:
            continue
        for node in ast.walk(tree):
            key = None
            if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and (
                    isinstance(node.func, ast.Attribute) and node.func.attr == "get"):
                key = node.args[0].value
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") \
                    and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                key = node.args[1].value
            elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                key = node.slice.value
            assert key not in keys, (f"{path}:{node.lineno}: reads plugin config key {key!r}; ask the plugin "
                                     "(a Plugin classmethod taking the saved config)")


def test_every_entry_point_has_a_group_yaml_and_vice_versa():
    names = _plugin_names()
    groups = {p.stem for p in (PKG / "configs" / "solo_sparse").glob("*.yaml")} - {"methods"}
    assert names == groups, f"entry points without YAML: {names - groups}; YAML without entry point: {groups - names}"
    for n in names:
        text = (PKG / "configs" / "solo_sparse" / f"{n}.yaml").read_text()
        assert f"plugin: {n}\n" in text and "solo_sparse.binding.hydra_callback.SoloSparseCallback" in text
        assert "init_density" not in text and "final_density" not in text   # keys live in the config class only


#: the rooms of ``tools``: module prefix -> who may import it (module prefixes, ``plugins`` = plugins/)
TOOLS_ROOMS = {
    "solo_sparse.tools.cli": (),
    "solo_sparse.tools.bench": ("solo_sparse.tools.cli", "solo_sparse.tools.bench"),
    "solo_sparse.tools.imp": ("solo_sparse.tools.imp", "solo_sparse.tools.bench.rounds", "plugins"),
}
#: inside the benchmark: submodule -> the bench submodules it may import (a suite is data; results are made from rows)
BENCH_ALLOWED = {"suite": set(), "measure": set(), "results": {"suite"}, "harness": {"suite", "measure", "results", "rounds"},
                 "rounds": {"harness", "suite"}}


def _module_name(path: Path) -> str:
    if path.parts[len(ROOT.parts)] == "plugins":
        return "plugins." + path.stem
    rel = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def _full_imports(tree: ast.AST):
    """Every imported module name, ``from a.b import c`` giving ``a.b.c`` as well as ``a.b``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import of {node.module} (line {node.lineno}): import absolutely"
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_tools_rooms_keep_their_order():
    rooms_seen = set()
    for path, tree in _sources():
        me = _module_name(path)
        for mod in set(_full_imports(tree)):
            for room, importers in TOOLS_ROOMS.items():
                if _within(mod, room) and not _within(me, room):
                    rooms_seen.add(room)
                    assert any(_within(me, i) for i in importers), \
                        f"{path}: imports {mod}; {room} may be imported only by {', '.join(importers) or 'nothing'}"
            if _within(me, "solo_sparse.tools.bench") and _within(mod, "solo_sparse.tools.bench") and me.count(".") == 3:
                sub, other = me.split(".")[3], mod.split(".")[3] if mod.count(".") >= 3 else None
                if other is not None and other != sub:
                    assert other in BENCH_ALLOWED[sub], (f"{path}: imports {mod}; bench.{sub} may import only "
                                                         f"{sorted(BENCH_ALLOWED[sub]) or 'no other bench module'}")
    assert {"solo_sparse.tools.bench", "solo_sparse.tools.imp"} <= rooms_seen      # the check sees the rooms
    assert set(BENCH_ALLOWED) == {p.stem for p in (PKG / "tools" / "bench").glob("*.py")} - {"__init__"}


#: the folders of tests/: one per layer (solo_sparse/<layer>, plugins/ for plugins/), and integration/ for trainings
#: through solo-learn, Lightning and subprocesses
TEST_FOLDERS = {"core", "engine", "gating", "families", "plugins", "binding", "lightning", "tools", "zoo", "integration"}


def test_the_tests_mirror_the_package():
    tests = ROOT / "tests"
    at_root = sorted(p.name for p in tests.glob("test_*.py"))
    assert at_root == ["test_architecture.py"], (f"test files at tests/ root: {at_root}; put each in the folder of the "
                                                 f"layer it tests ({', '.join(sorted(TEST_FOLDERS))})")
    files = [p for p in tests.rglob("test_*.py") if p.parent != tests and "data" not in p.relative_to(tests).parts]
    folders = {p.relative_to(tests).parts[0] for p in files}
    assert folders <= TEST_FOLDERS, f"test folders that mirror no layer: {sorted(folders - TEST_FOLDERS)}"
    assert all(len(p.relative_to(tests).parts) == 2 for p in files), "one folder level below tests/"
    for f in TEST_FOLDERS - {"integration", "plugins"}:
        assert (PKG / f).is_dir(), f"tests/{f}/ mirrors no solo_sparse/{f}/"
    names = [p.name for p in files]
    assert len(names) == len(set(names)), f"two test files of one name: {sorted(n for n in names if names.count(n) > 1)}"
    assert not list(tests.rglob("__init__.py")), "no __init__.py under tests/ (conftest and helpers import by name)"
