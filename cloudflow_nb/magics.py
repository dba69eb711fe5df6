"""IPython magics: ``%%flow``, ``%explain`` and ``%graph``.

Load them with ``%load_ext cloudflow_nb``:

``%%flow [VAR] [--optimized] [--text] [--rankdir LR]``
    Runs the cell, then shows the graph of the flow it built: ``VAR`` when given, else the last
    ``cf.Flow`` the cell assigned (or the value of its last line, when that is a flow).
``%explain VAR [--logical]``
    Prints the optimized plan of a flow (or a ``cf.Plan``); ``--logical`` prints the logical one.
``%graph VAR [--logical] [--rankdir LR] [--source]``
    Shows the plan as a graph; ``--source`` prints the DOT source instead.

Graphs are shown through the same never-raising display as the flow's own repr: without the
Graphviz ``dot`` program they fall back to the text plan and say how to install it.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, needs_local_scope
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

__all__ = ["FlowMagics", "register", "unregister"]

RANKDIRS = ("TB", "LR", "BT", "RL")


def register(ipython: Any) -> None:
    """Register the magics with an IPython shell (``%load_ext cloudflow_nb`` calls this)."""
    ipython.register_magics(FlowMagics)


def unregister(ipython: Any) -> None:
    """Remove the magics again (``%unload_ext cloudflow_nb``)."""
    registry = ipython.magics_manager.magics
    for kind, names in FlowMagics.magics.items():
        for name in names:
            registry[kind].pop(name, None)


@magics_class
class FlowMagics(Magics):
    """Magics that show and explain cloudflow_nb flows."""

    @property
    def _ip(self) -> InteractiveShell:
        shell = self.shell
        if shell is None:  # only before registration
            raise UsageError("cloudflow_nb magics are not registered with a shell")
        return shell

    @magic_arguments()
    @argument("var", nargs="?", default=None, help="the variable holding the flow to show")
    @argument("-o", "--optimized", action="store_true", help="show the optimized plan instead of the logical one")
    @argument("-t", "--text", action="store_true", help="print the plan as text instead of drawing it")
    @argument("--rankdir", type=str.upper, choices=RANKDIRS, default=None, help="graph direction")
    @cell_magic
    def flow(self, line: str, cell: str) -> None:
        """Run the cell, then show the flow it built."""
        args = parse_argstring(self.flow, line)
        if args.var is not None:
            _check_name("%%flow", args.var)
        assigned, last_value = self._run_cell_body(cell)
        if args.var is not None:
            target = _resolve("%%flow", args.var, None, self._ip.user_ns)
            _require_flow("%%flow", args.var, target)
        else:
            target = _last_flow(assigned, last_value, self._ip.user_ns)
            if target is None:
                if last_value is not None:
                    display(last_value)
                raise UsageError("%%flow: the cell built no cf.Flow (assign one to a variable, or name it: %%flow VAR)")
        _show(target, optimized=args.optimized, text=args.text, rankdir=args.rankdir)

    @magic_arguments()
    @argument("var", help="the variable holding a cf.Flow or a cf.Plan")
    @argument("-l", "--logical", action="store_true", help="the logical plan instead of the optimized one")
    @needs_local_scope
    @line_magic
    def explain(self, line: str, local_ns: dict[str, Any] | None = None) -> None:
        """Print the optimized (or, with ``--logical``, the logical) plan of a flow."""
        args = parse_argstring(self.explain, line)
        target = _resolve("%explain", args.var, local_ns, self._ip.user_ns)
        print(_explain(_plannable("%explain", args.var, target), optimized=not args.logical))

    @magic_arguments()
    @argument("var", help="the variable holding a cf.Flow or a cf.Plan")
    @argument("-l", "--logical", action="store_true", help="the logical plan instead of the optimized one")
    @argument("--rankdir", type=str.upper, choices=RANKDIRS, default=None, help="graph direction")
    @argument("-s", "--source", action="store_true", help="print the DOT source instead of drawing it")
    @needs_local_scope
    @line_magic
    def graph(self, line: str, local_ns: dict[str, Any] | None = None) -> None:
        """Draw the optimized (or, with ``--logical``, the logical) plan of a flow."""
        args = parse_argstring(self.graph, line)
        target = _plannable("%graph", args.var, _resolve("%graph", args.var, local_ns, self._ip.user_ns))
        if args.source:
            print(_graph(target, optimized=not args.logical, rankdir=args.rankdir).source, end="")
            return
        _show(target, optimized=not args.logical, text=False, rankdir=args.rankdir)

    # -- helpers ------------------------------------------------------------------------------

    def _run_cell_body(self, cell: str) -> tuple[list[str], Any]:
        """Execute the cell in the user namespace; return the names it assigned and its last value.

        Exceptions propagate, so a failing cell fails like any other cell.
        """
        shell = self._ip
        code = shell.transform_cell(cell)
        tree = ast.parse(code)
        # register the source so tracebacks and lambda labels point at the cell
        filename = shell.compile.cache(code, shell.execution_count, raw_code=cell)
        last_expr = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last_expr = ast.Expression(tree.body.pop().value)
        exec(compile(tree, filename, "exec"), shell.user_global_ns, shell.user_ns)
        value = None
        if last_expr is not None:
            value = eval(compile(last_expr, filename, "eval"), shell.user_global_ns, shell.user_ns)
        return _assigned_names(ast.parse(code)), value


def _assigned_names(tree: ast.AST) -> list[str]:
    """Names bound at the top level of ``tree``, in source order (nested scopes excluded)."""
    found: list[tuple[int, int, str]] = []

    class Visitor(ast.NodeVisitor):
        def visit_Name(self, node: ast.Name) -> None:
            if isinstance(node.ctx, ast.Store):
                found.append((node.lineno, node.col_offset, node.id))

        def _skip(self, node: ast.AST) -> None:
            pass

        visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = _skip
        visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _skip

    Visitor().visit(tree)
    return [name for _, _, name in sorted(found)]


def _flow_class() -> type:
    from cloudflow_nb.flow import Flow

    return Flow


def _last_flow(assigned: list[str], last_value: Any, namespace: dict[str, Any]) -> Any:
    flow_cls = _flow_class()
    if isinstance(last_value, flow_cls):
        return last_value
    for name in reversed(assigned):
        value = namespace.get(name)
        if isinstance(value, flow_cls):
            return value
    return None


def _check_name(magic: str, name: str) -> None:
    if not all(part.isidentifier() for part in name.split(".")):
        raise UsageError(f"{magic}: {name!r} is not a variable name (expected e.g. 'flow' or 'pipeline.out')")


def _resolve(magic: str, name: str, local_ns: dict[str, Any] | None, user_ns: dict[str, Any]) -> Any:
    """The value of ``name`` (``var`` or ``var.attr``), looked up in the caller's scope, then the user's."""
    _check_name(magic, name)
    head, *rest = name.split(".")
    if local_ns is not None and head in local_ns:
        value = local_ns[head]
    elif head in user_ns:
        value = user_ns[head]
    else:
        raise UsageError(f"{magic}: no variable named {head!r}")
    for i, attr in enumerate(rest):
        try:
            value = getattr(value, attr)
        except AttributeError:
            owner = ".".join([head, *rest[:i]])
            raise UsageError(f"{magic}: {owner!r} has no attribute {attr!r}") from None
    return value


def _require_flow(magic: str, name: str, value: Any) -> None:
    if not isinstance(value, _flow_class()):
        raise UsageError(f"{magic}: {name!r} is a {type(value).__name__}, not a cf.Flow")


def _plannable(magic: str, name: str, value: Any) -> Any:
    """A flow, or a ``cf.Plan`` seen as the flow of its logical plan plus its own physical plan."""
    from cloudflow_nb.physical import Plan

    if isinstance(value, (_flow_class(), Plan)):
        return value
    raise UsageError(f"{magic}: {name!r} is a {type(value).__name__}, not a cf.Flow or a cf.Plan")


def _explain(target: Any, optimized: bool) -> str:
    from cloudflow_nb.physical import Plan

    if isinstance(target, Plan):
        if optimized:
            return target.explain()
        from cloudflow_nb.explain import explain_logical

        return explain_logical(target.logical)
    return target.explain(optimized=optimized)


def _graph(target: Any, optimized: bool, rankdir: str | None) -> Any:
    from cloudflow_nb.physical import Plan

    if isinstance(target, Plan):
        if optimized:
            graph = target.show_graph()
        else:
            from cloudflow_nb.viz import logical_graph

            graph = logical_graph(target.logical)
    else:
        graph = target.show_graph(optimized=optimized)
    if rankdir is not None:
        graph.graph_attr["rankdir"] = rankdir
    return graph


def _show(target: Any, optimized: bool, text: bool, rankdir: str | None) -> None:
    """Display the plan's graph (never raising: text when ``dot`` is missing), or print its text."""
    if text:
        print(_explain(target, optimized))
        return
    from cloudflow_nb.viz import mimebundle

    draw: Callable[[], Any] = lambda: _graph(target, optimized, rankdir)  # noqa: E731
    bundle = mimebundle(draw, lambda: _explain(target, optimized), repr(target))
    display(bundle, raw=True)
