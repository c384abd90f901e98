"""Every `_`-prefixed name of torch, mlflow and pluggy that knightctl touches, read from the source
with `ast` (nothing is imported), against an allow-list that gives each one's reason.

Found: imports of a private module or name (`import torch._dynamo`, `from mlflow.x._y import z`,
`from torch import _C`, `importlib.import_module("torch._x")`), and private attributes
(`torch._foreach_norm`, `getattr(torch, "_x")`, `client._store`) of those packages and of the
objects obtained from them, as far as a reading can tell: names bound by those imports; names
assigned from an expression rooted in one (a call's result, an attribute, an item), or from a call
of a function of the same scope that returns one; loop and `with` targets over one; parameters
annotated with one of their types; a name that `isinstance` tests against one of their classes;
and `self` in a class derived from one of their classes (but for what the class defines itself).
A finding is its file and the expression up to the private name, calls shown as `()`.

A new finding fails the test: use the public API, or add the finding to ALLOWED with why no public
one does (and say so beside the code too). An allowed finding that is gone fails it as well, so
that the list stays true.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "knightctl"
PACKAGES = {"torch", "mlflow", "pluggy"}

# (file, expression): why no public API does.
ALLOWED: dict[tuple[str, str], str] = {
    ("knightctl/plugins/opsupport.py", "torch._library.custom_ops"): (
        "CustomOpDef, the class of a torch.library.custom_op, is public as torch.library.CustomOpDef from torch "
        "2.5; imported from here only on older torch (the project supports torch>=2.4)"
    ),
    ("knightctl/plugins/opsupport.py", "torch._ops"): (
        "OpOverload and OpOverloadPacket, the classes of torch.ops.ns.op(.overload), have no public name; "
        "torch.library itself imports them from torch._ops"
    ),
    ("knightctl/gradcheck/vmapfallback.py", "torch._ops"): (
        "OpOverload and OpOverloadPacket have no public name (as in plugins/opsupport.py)"
    ),
    ("knightctl/gradcheck/vmapfallback.py", "fn._qualname"): (
        "the 'ns::op' name of a CustomOpDef: the class has no public attribute or method that gives it"
    ),
    ("knightctl/gradcheck/vmapfallback.py", "fn._qualified_op_name"): (
        "the 'ns::op' name of an OpOverloadPacket: no public attribute gives it (packet.default.name() does only "
        "where the op has a default overload)"
    ),
    ("knightctl/gradcheck/vmapfallback.py", "torch._C._dispatch_has_kernel_for_dispatch_key"): (
        "whether an op has a batching rule of its own (a FuncTorchBatched kernel): torch has no public query, and "
        "without one torch.vmap falls back to a loop that knightctl warns about"
    ),
    ("knightctl/gradcheck/vmapfallback.py", "torch._C._functorch._set_vmap_fallback_warning_enabled"): (
        "the only way to silence torch's C++ BatchedFallback warning, printed at every vmap of an op without a "
        "batching rule; read with getattr, so a torch without it keeps its warning"
    ),
}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_module(module: str) -> bool:
    """Whether `module` (dotted) is in one of PACKAGES with a private part on the way."""
    parts = module.split(".")
    return parts[0] in PACKAGES and any(is_private(part) for part in parts[1:])


def chain(node: ast.AST) -> str:
    """`torch._C._functorch`, `MlflowClient()._store`, `runs[]._info`: an expression as a finding names it."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{chain(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return f"{chain(node.func)}()"
    if isinstance(node, ast.Subscript):
        return f"{chain(node.value)}[]"
    return "<expression>"


def targets(node: ast.AST) -> Iterator[str]:
    """The names (and dotted names such as `self.monitor`) that an assignment target binds."""
    if isinstance(node, (ast.Name, ast.Attribute)):
        yield chain(node)
    elif isinstance(node, (ast.Tuple, ast.List)):
        for element in node.elts:
            yield from targets(element)
    elif isinstance(node, ast.Starred):
        yield from targets(node.value)


class Scope:
    """The names of one module, function or class body that hold torch, mlflow or pluggy objects."""

    def __init__(self, held: set[str]) -> None:
        self.held = held

    def holds(self, node: ast.AST | None) -> bool:
        """Whether `node` evaluates to one of the packages' modules or objects, as far as can be told."""
        if isinstance(node, ast.Name):
            return node.id in self.held
        if isinstance(node, ast.Attribute):
            return chain(node) in self.held or self.holds(node.value)
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id == "getattr" and node.args:
                return self.holds(node.args[0])
            return self.holds(node.func)
        if isinstance(node, (ast.Subscript, ast.Starred, ast.Await)):
            return self.holds(node.value)
        if isinstance(node, ast.IfExp):
            return self.holds(node.body) or self.holds(node.orelse)
        if isinstance(node, ast.BoolOp):
            return any(self.holds(value) for value in node.values)
        if isinstance(node, ast.BinOp):
            return self.holds(node.left) or self.holds(node.right)
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            return any(self.holds(element) for element in node.elts)
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp)):
            return self.holds(node.elt) or any(self.holds(each.iter) for each in node.generators)
        return False

    def mentions(self, annotation: ast.AST | None) -> bool:
        """Whether a type annotation names one of the packages' types anywhere (`torch.Tensor | None`)."""
        return annotation is not None and any(
            self.holds(node) for node in ast.walk(annotation) if isinstance(node, (ast.Name, ast.Attribute))
        )

    def bind(self, node: ast.AST) -> None:
        """Add the names that `node` binds to one of the packages' modules or objects."""
        if isinstance(node, ast.Import):
            self.held.update(alias.asname or alias.name.split(".")[0] for alias in node.names if _ours(alias.name))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and _ours(node.module):
            self.held.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.NamedExpr)):
            many = node.targets if isinstance(node, ast.Assign) else [node.target]
            if self.holds(node.value) or (isinstance(node, ast.AnnAssign) and self.mentions(node.annotation)):
                self.held.update(name for target in many for name in targets(target))
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)) and self.holds(node.iter):
            self.held.update(targets(node.target))
        elif isinstance(node, ast.withitem) and node.optional_vars is not None and self.holds(node.context_expr):
            self.held.update(targets(node.optional_vars))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance":
            if len(node.args) == 2 and isinstance(node.args[0], ast.Name) and self.holds(node.args[1]):
                self.held.add(node.args[0].id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and self.returns_held(node):
            self.held.add(node.name)

    def returns_held(self, function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
        """Whether `function` is annotated to return, or returns, one of the packages' objects."""
        if self.mentions(function.returns):
            return True
        inner = self.inside(function)
        return any(isinstance(node, ast.Return) and inner.holds(node.value) for node in body_of(function))

    def inside(self, function: ast.FunctionDef | ast.AsyncFunctionDef) -> Scope:
        """The scope of `function`'s body: this one's names, its parameters annotated with the packages'
        types, and what its body binds."""
        inner = Scope(set(self.held))
        arguments = function.args
        positional = [*arguments.posonlyargs, *arguments.args]
        defaults = [None] * (len(positional) - len(arguments.defaults)) + list(arguments.defaults)
        pairs = [
            *zip(positional, defaults, strict=True),
            *zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True),
        ]
        for argument, default in pairs:
            if inner.mentions(argument.annotation) or self.holds(default):
                inner.held.add(argument.arg)
        inner.settle(body_of(function))
        return inner

    def settle(self, nodes: list[ast.AST]) -> None:
        """Bind until nothing changes: a name may be bound from one bound later in the text."""
        binding = [node for node in nodes if isinstance(node, BINDING)]
        while True:
            before = len(self.held)
            for node in binding:
                self.bind(node)
            if len(self.held) == before:
                return


BINDING = (
    ast.Import,
    ast.ImportFrom,
    ast.Assign,
    ast.AnnAssign,
    ast.AugAssign,
    ast.NamedExpr,
    ast.For,
    ast.AsyncFor,
    ast.comprehension,
    ast.withitem,
    ast.Call,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
)


def _ours(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


@functools.cache
def body_of(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.AST]:
    """`own_nodes` of a function's body, read once."""
    return list(own_nodes(function.body))


def own_nodes(body: list[ast.stmt]) -> Iterator[ast.AST]:
    """Every node of `body`, but not the bodies of the functions and classes in it (scopes of their own)."""
    stack: list[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            stack.extend([*node.decorator_list, *node.args.defaults, *filter(None, node.args.kw_defaults)])
        elif isinstance(node, ast.ClassDef):
            stack.extend([*node.decorator_list, *node.bases])
        else:  # a lambda's body included: it sees this scope's names
            stack.extend(ast.iter_child_nodes(node))


def touched(scope: Scope, node: ast.AST) -> Iterator[str]:
    """The packages' private names that `node` touches."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names if private_module(alias.name))
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and _ours(node.module):
        if private_module(node.module):
            yield node.module
        else:
            yield from (f"{node.module}.{alias.name}" for alias in node.names if is_private(alias.name))
    elif isinstance(node, ast.Attribute) and is_private(node.attr) and scope.holds(node.value):
        yield chain(node)
    elif isinstance(node, ast.Call) and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
        name = node.args[1].value
        if chain(node.func) in ("getattr", "hasattr", "setattr", "delattr") and isinstance(name, str):
            if is_private(name) and scope.holds(node.args[0]):
                yield f"{chain(node.args[0])}.{name}"
    if isinstance(node, ast.Call) and chain(node.func) in ("importlib.import_module", "import_module") and node.args:
        module = node.args[0]
        if isinstance(module, ast.Constant) and isinstance(module.value, str) and private_module(module.value):
            yield module.value


def scan(owner: ast.AST, scope: Scope) -> Iterator[str]:
    """What the body of one module, function or class touches, then the functions and classes inside it."""
    nodes = (
        body_of(owner) if isinstance(owner, (ast.FunctionDef, ast.AsyncFunctionDef)) else list(own_nodes(owner.body))
    )
    scope.settle(nodes)
    for node in nodes:
        yield from touched(scope, node)
    for node in nodes:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from scan(node, scope.inside(node))
        elif isinstance(node, ast.ClassDef):
            yield from scan_class(node, scope)


def scan_class(node: ast.ClassDef, scope: Scope) -> Iterator[str]:
    """A class body and its methods, which share the attributes of `self` that one of them binds to the
    packages' objects. In a class derived from one of the packages' classes, `self` is one of their
    objects too, but for the attributes the class defines or assigns itself."""
    body = Scope(set(scope.held))
    for method in node.body:
        if isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)) and method.args.args:
            prefix = method.args.args[0].arg + "."
            body.held.update(name for name in body.inside(method).held if name.startswith(prefix))
    yield from scan(node, body)
    if not any(scope.holds(base) for base in node.bases):
        return
    own = {item.name for item in node.body if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))}
    for each in ast.walk(node):
        if isinstance(each, (ast.Assign, ast.AnnAssign)):
            for target in each.targets if isinstance(each, ast.Assign) else [each.target]:
                own.update(name.split(".")[-1] for name in targets(target))
    for method in node.body:
        if isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)) and method.args.args:
            self_name = method.args.args[0].arg
            for each in own_nodes(method.body):
                if isinstance(each, ast.Attribute) and isinstance(each.value, ast.Name) and each.value.id == self_name:
                    if is_private(each.attr) and each.attr not in own:
                        yield f"{node.name}.{each.attr}"


def findings_in(source: str) -> set[str]:
    """The packages' private names that the module `source` touches."""
    found = set(scan(ast.parse(source), Scope(set())))
    # The longest private chain only: torch._C._functorch, not torch._C as well.
    return {each for each in found if not any(other.startswith(each + "._") for other in found)}


def findings() -> set[tuple[str, str]]:
    """(file, expression) for every private name of torch, mlflow or pluggy that knightctl touches."""
    return {
        (path.relative_to(ROOT).as_posix(), expression)
        for path in sorted(PACKAGE.rglob("*.py"))
        for expression in findings_in(path.read_text(encoding="utf-8"))
    }


def test_knightctl_touches_no_private_name_of_torch_mlflow_or_pluggy_but_those_allowed() -> None:
    found = findings()
    new, gone = sorted(found - set(ALLOWED)), sorted(set(ALLOWED) - found)
    assert not new, (
        "private names of torch, mlflow or pluggy that ALLOWED does not list; use the public API, or add each "
        "with why none does:\n" + "\n".join(f"  {path}: {expression}" for path, expression in new)
    )
    assert not gone, "ALLOWED lists what knightctl no longer touches; remove:\n" + "\n".join(
        f"  {path}: {expression}" for path, expression in gone
    )


def test_every_allowed_name_says_why() -> None:
    assert all(len(reason.split()) >= 5 for reason in ALLOWED.values())


def test_the_scan_finds_private_names_however_they_are_reached() -> None:
    source = """
import torch
import torch._dynamo
import mlflow.data as data
from mlflow.store._unity import thing
from pluggy import _hooks
from torch.nn import functional as F
from mlflow.tracking import MlflowClient
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

norms = torch._foreach_norm([])
if hasattr(torch, "_foreach_norm"):
    pass
module = importlib.import_module("torch._inductor")

def helper(x):
    return data.from_numpy(x)

def entity(x):
    return helper(x)._to_mlflow_entity()

def store(uri):
    client = MlflowClient(uri)
    return client._tracking_client._store

def version(t: torch.Tensor | None) -> int:
    return t._version

def kind(fn, custom=getattr(torch.library, "CustomOpDef", None)):
    if isinstance(fn, custom):
        return fn._qualname
    return F._reduction

class Holder:
    def __init__(self, uri):
        self.client = MlflowClient(uri)

    def store(self):
        return self.client._store

class Monitor(SystemMetricsMonitor):
    def finish(self):
        self._mine = 1
        return self._process, self._mine, self.start()
"""
    assert findings_in(source) == {
        "torch._dynamo",
        "mlflow.store._unity",
        "pluggy._hooks",
        "torch._foreach_norm",
        "torch._inductor",
        "helper()._to_mlflow_entity",
        "client._tracking_client._store",
        "t._version",
        "fn._qualname",
        "F._reduction",
        "self.client._store",
        "Monitor._process",
    }


def test_the_scan_leaves_knightctl_s_own_and_the_standard_library_s_names_alone() -> None:
    source = """
import os
import torch
from collections import namedtuple

class Sampler:
    def __init__(self):
        self._thread = None
        self._stop = os._exit

def go(parts: namedtuple):
    print(torch.__version__, parts._replace(a=1), Sampler()._thread)
    own = object()
    return own._private
"""
    assert findings_in(source) == set()
