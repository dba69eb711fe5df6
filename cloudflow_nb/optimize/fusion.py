"""Operator fusion: run a linear chain of operators (or the whole flow) as one stage.

A fused stage passes its intermediate tables in memory instead of shipping them between
replicas. Chains never cross a fan-in (join, union, anyof), end at a fan-out, and stop at a
CPU/GPU boundary; a high-variance operator stays alone while racing is on, a dynamic lookup
starts a new stage while locality is on, and an ``anyof`` runs alone in the router. Filters that
read a fan-out run in the stage that feeds them (:mod:`.hoisting`).
"""

from __future__ import annotations

from cloudflow_nb.optimize.graph import Graph, device_of
from cloudflow_nb.optimize.hoisting import hoist_filters
from cloudflow_nb.optimize.locality import locality_cut
from cloudflow_nb.optimize.options import Optimize
from cloudflow_nb.physical import Decision, Plan, build_plan
from cloudflow_nb.plan import AnyOf, Map, Node, Source

__all__ = ["RULE", "fuse"]

RULE = "fusion"

Groups = list[list[Node]]
Declines = list[tuple[Node, str]]


def fuse(plan: Plan) -> Plan:
    """Pass ``fused``: regroup the logical operators into stages, recording every boundary kept."""
    options: Optimize = plan.options
    graph = Graph(plan.logical)
    if options.whole:
        groups, declines, notes = _whole(graph, options)
    elif options.fusion:
        groups, declines = _chains(graph, options)
        notes = []
    else:
        groups = [[n] for n in graph.nodes]
        declines = []
        notes = [Decision(RULE, f"flow {plan.name!r}", False, "off (Optimize(fusion=False)): one stage per operator")]
    fused = build_plan(plan.name, plan.logical, groups)
    applied = [
        Decision(RULE, stage.name, True, _fused_reason(len(stage.operators), options))
        for stage in fused.stages
        if len(stage.operators) > 1
    ]
    stages = list(fused.stages)
    if options.fusion and not options.whole and stages:
        stages, hoisted = hoist_filters(stages, fused.output.name, options)
        applied += hoisted
    decisions = applied + notes + [Decision(RULE, node.title, False, why) for node, why in declines]
    return plan.with_stages(stages, *decisions, pass_name="fused")


def _fused_reason(count: int, options: Optimize) -> str:
    if options.whole:
        return f"whole-flow fusion (Optimize(whole=True)): {count} operators in one process"
    return f"fused a linear chain of {count} operators: intermediate tables stay in memory"


def _chains(graph: Graph, options: Optimize) -> tuple[Groups, Declines]:
    """Maximal linear chains, each ending at a fan-out, cut where a barrier says so."""
    group_of: dict[int, list[Node]] = {}
    declines: Declines = []
    for node in graph.nodes:
        if isinstance(node, AnyOf):
            declines.append((node, "stays alone: anyof runs in the deployment's router"))
        elif len(node.children) > 1:
            declines.append((node, f"fan-in of {len(node.children)} inputs starts a new stage"))
        group = _extend(graph, node, group_of, options, declines)
        fan_out = len(graph.readers[id(node)])
        if fan_out > 1:
            declines.append((node, f"fan-out to {fan_out} operators ends its chain"))
        group.append(node)
        group_of[id(node)] = group
    unique = {id(g): g for g in group_of.values()}
    return list(unique.values()), declines


def _extend(
    graph: Graph, node: Node, group_of: dict[int, list[Node]], options: Optimize, declines: Declines
) -> list[Node]:
    """The chain ``node`` joins: its input's chain when nothing stops it, else a new one."""
    if len(node.children) != 1 or isinstance(node, AnyOf):
        return []
    (child,) = node.children
    if isinstance(child, Source) or len(graph.readers[id(child)]) != 1:
        return []
    chain = group_of[id(child)]
    why = _barrier(chain, node, options)
    if why is not None:
        declines.append((node, why))
        return []
    return chain


def _barrier(chain: list[Node], node: Node, options: Optimize) -> str | None:
    """Why ``node`` may not join ``chain``, the stage of its only input (``None``: it may)."""
    last = chain[-1]
    if isinstance(last, AnyOf):
        return "reads an anyof, which runs alone in the deployment's router"
    cut = locality_cut(node, options)
    if cut is not None:
        return cut
    if options.compete > 1:
        racer = next((n for n in [*chain, node] if isinstance(n, Map) and n.high_variance), None)
        if racer is not None:
            return (
                f"not fused with {last.title}: {racer.title} is high_variance and stays alone, so each of "
                f"its {options.compete} racing replicas re-runs only it, not its neighbours"
            )
    if options.gpu:
        mine = device_of(node)
        clash = next((n for n in chain if device_of(n) not in (None, mine)), None) if mine else None
        if clash is not None:
            cpu, gpu = (node, clash) if mine == "cpu" else (clash, node)
            return (
                f"not fused with {last.title}: CPU/GPU boundary ({cpu.title} runs on CPU workers, "
                f"{gpu.title} needs a GPU; fusing would tie CPU work to scarce GPU workers)"
            )
    return None


def _whole(graph: Graph, options: Optimize) -> tuple[Groups, Declines, list[Decision]]:
    """As few stages as possible: one per region between routers and locality cuts."""
    chain_groups, chain_declines = _chains(graph, options)
    notes: list[Decision] = []
    declines: Declines = []
    region: dict[int, int] = {}
    for node in graph.nodes:
        if isinstance(node, AnyOf):
            declines.append((node, "stays alone in the router; whole-flow fusion splits around it"))
            continue
        region[id(node)] = id(node)
        cut = locality_cut(node, options)
        if cut is not None:
            if not isinstance(node.children[0], Source):
                declines.append((node, cut))
            continue
        for child in node.children:
            if id(child) in region:
                _merge(region, id(child), id(node))
    members: dict[int, list[Node]] = {}
    for node in graph.nodes:
        if id(node) in region:
            members.setdefault(_find(region, id(node)), []).append(node)
    groups: Groups = [[n] for n in graph.nodes if isinstance(n, AnyOf)]
    for part in members.values():
        problem = graph.group_problem(part)
        if problem is None:
            groups.append(part)
            notes += _crossings(part)
            continue
        inside = {id(n) for n in part}
        notes.append(
            Decision(RULE, part[0].title, False, f"whole-flow fusion declined: {problem}; fell back to chains")
        )
        groups += [g for g in chain_groups if id(g[0]) in inside]
        declines += [(n, why) for n, why in chain_declines if id(n) in inside]
    return [graph.sorted(g) for g in groups], declines, notes


def _crossings(part: list[Node]) -> list[Decision]:
    gpu = [n for n in part if device_of(n) == "gpu"]
    cpu = [n for n in part if device_of(n) == "cpu"]
    if not (gpu and cpu):
        return []
    return [
        Decision(
            RULE,
            cpu[0].title,
            True,
            f"whole-flow fusion crosses the CPU/GPU boundary: runs with {gpu[0].title} on GPU workers",
        )
    ]


def _find(parent: dict[int, int], key: int) -> int:
    while parent[key] != key:
        parent[key] = parent[parent[key]]
        key = parent[key]
    return key


def _merge(parent: dict[int, int], a: int, b: int) -> None:
    ra, rb = _find(parent, a), _find(parent, b)
    if ra != rb:
        parent[max(ra, rb)] = min(ra, rb)
