"""A deployment's and a cluster's live figures as words: node labels, text tables, notebook snapshots.

Pure functions turn ``Deployment.stats()`` into the lines drawn on each stage's node
(:func:`stage_notes`) and into a text table of the same figures (:func:`figures_table`), and
``Cluster.worker_report()`` into a worker table (:func:`workers_table`, :func:`workers_html`).
:func:`deployment_bundle` and :func:`cluster_bundle` are the notebook reprs built from them: a
static snapshot that never raises; ``cf.watch`` (:mod:`cloudflow_nb.liveview`) keeps it live.
"""

from __future__ import annotations

import html
from collections.abc import Collection, Mapping
from typing import Any

__all__ = [
    "WATCH_HINT",
    "cluster_bundle",
    "deployment_bundle",
    "deployment_svg",
    "figures_table",
    "gpu_workers",
    "headline",
    "stage_lines",
    "stage_notes",
    "workers_html",
    "workers_table",
]

WATCH_HINT = "live view: cf.watch(dep)"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g} ms" if value < 100 else f"{value:.0f} ms"


def stage_lines(stage: Mapping[str, Any], gpu: Collection[str] = ()) -> list[str]:
    """The live figures of one stage (an entry of ``stats()["stages"]``) as short label lines.

    ``gpu`` holds the addresses of GPU-tagged workers, marked ``[GPU]`` beside their replicas.

    Examples
    --------
    >>> stage_lines({"count": 3, "batching": None, "errors": 0, "rejected": 0, "p50_ms": 1.5, "p99_ms": 2.0,
    ...              "queued": 0, "inflight": 1, "in_router": False,
    ...              "replicas": [{"worker": "tcp://h:1", "device": "cpu", "calls": 3}]})
    ['3 calls, 0 errors, 0 rejected', 'p50 1.5 ms, p99 2 ms', '0 queued, 1 in flight', '1 replica: h:1 (3 calls)']
    """
    lines = [
        f"{stage.get('count', 0)} calls, {stage.get('errors', 0)} errors, {stage.get('rejected', 0)} rejected",
        f"p50 {_ms(stage.get('p50_ms'))}, p99 {_ms(stage.get('p99_ms'))}",
    ]
    if stage.get("batching") and stage.get("mean_batch") is not None:
        lines.append(f"batch size mean {stage['mean_batch']:g}, max {stage.get('max_batch')}")
    if stage.get("in_router"):
        return [*lines, "runs in the router"]
    lines.append(f"{stage.get('queued', 0)} queued, {stage.get('inflight', 0)} in flight")
    replicas = list(stage.get("replicas") or [])
    per_worker: dict[str, list[Mapping[str, Any]]] = {}
    for r in replicas:
        per_worker.setdefault(str(r.get("worker", "?")), []).append(r)
    lines.append(f"{len(replicas)} replica{'s' if len(replicas) != 1 else ''}:" + ("" if replicas else " none"))
    if len(per_worker) == 1 and len(replicas) == 1:  # the common case on one line
        lines[-1] = lines[-1] + " " + _worker_line(*next(iter(per_worker.items())), gpu)
    else:
        lines += ["  " + _worker_line(w, rs, gpu) for w, rs in sorted(per_worker.items())]
    return lines


def _worker_line(worker: str, replicas: list[Mapping[str, Any]], gpu: Collection[str]) -> str:
    tags = ["GPU"] if worker in gpu else []
    tags += sorted({str(r.get("device")) for r in replicas if r.get("device") not in (None, "", "cpu")})
    count = f"{len(replicas)}x " if len(replicas) > 1 else ""
    calls = sum(int(r.get("calls") or 0) for r in replicas)
    tag = f" [{', '.join(tags)}]" if tags else ""
    return f"{count}{_short(worker)}{tag} ({calls} calls)"


def _short(address: str) -> str:
    return address.split("://", 1)[-1]


def stage_notes(stats: Mapping[str, Any], gpu: Collection[str] = ()) -> dict[str, list[str]]:
    """Stage name -> :func:`stage_lines`, for every stage in ``stats``."""
    return {name: stage_lines(stage, gpu) for name, stage in stats.get("stages", {}).items()}


def gpu_workers(workers: Collection[Any]) -> set[str]:
    """The GPU-tagged addresses among ``workers`` (``WorkerInfo``-like: ``address``, ``gpu``)."""
    return {w.address for w in workers if w.gpu}


def headline(stats: Mapping[str, Any]) -> str:
    """One line of request totals: count, errors, p50 and p99."""
    req = stats.get("requests", {})
    return (
        f"flow {stats.get('flow', '?')!r}: {req.get('count', 0)} requests, {req.get('errors', 0)} errors, "
        f"{req.get('rejected', 0)} rejected, p50 {_ms(req.get('p50_ms'))}, p99 {_ms(req.get('p99_ms'))}"
    )


def figures_table(stats: Mapping[str, Any], gpu: Collection[str] = ()) -> str:
    """The same figures as the graph, as a fixed-width text table (the view without ``dot``)."""
    head = ("stage", "calls", "errors", "rejected", "p50", "p99", "batch", "queued", "replicas (workers)")
    rows = [head]
    for name, st in stats.get("stages", {}).items():
        batched = st.get("batching") and st.get("mean_batch") is not None
        batch = f"{st['mean_batch']:g}/{st.get('max_batch')}" if batched else "-"
        where = "router" if st.get("in_router") else _replica_cell(st, gpu)
        rows.append(
            (
                name,
                str(st.get("count", 0)),
                str(st.get("errors", 0)),
                str(st.get("rejected", 0)),
                _ms(st.get("p50_ms")),
                _ms(st.get("p99_ms")),
                batch,
                str(st.get("queued", 0)),
                where,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows]
    return "\n".join([headline(stats), *(line.rstrip() for line in lines)])


def _replica_cell(stage: Mapping[str, Any], gpu: Collection[str]) -> str:
    per_worker: dict[str, list[Mapping[str, Any]]] = {}
    for r in stage.get("replicas") or []:
        per_worker.setdefault(str(r.get("worker", "?")), []).append(r)
    return "; ".join(_worker_line(w, rs, gpu) for w, rs in sorted(per_worker.items())) or "none"


def deployment_svg(plan: Any, stats: Mapping[str, Any], gpu: Collection[str] = ()) -> str:
    """The physical plan's graph with each stage's figures on its node, as SVG (needs ``dot``)."""
    from cloudflow_nb.viz import plan_graph

    graph = plan_graph(plan, notes=stage_notes(stats, gpu))
    return str(graph.pipe(format="svg", encoding="utf-8"))


def deployment_bundle(dep: Any) -> dict[str, str]:
    """The deployment's notebook repr: its graph with the figures now (SVG in HTML), or the text
    table without ``dot``; a line pointing to ``cf.watch(dep)``. Never raises."""
    from cloudflow_nb.viz import DOT_MISSING_HINT, dot_available

    short = repr(dep)
    try:
        if dep.closed:
            return {"text/plain": short}
        stats = dep.stats()
        gpu = gpu_workers(dep.workers())
        text = f"{figures_table(stats, gpu)}\n({WATCH_HINT})"
        if not dot_available():
            return {"text/plain": f"{text}\n{DOT_MISSING_HINT}"}
        try:
            svg = deployment_svg(dep.plan, stats, gpu)
        except Exception:  # a broken dot install: the text table is the view
            return {"text/plain": text}
        page = (
            f"<div><b>cf.Deployment {html.escape(dep.name)}</b>: {html.escape(headline(stats))}<br>"
            f"{_svg_body(svg)}<div><i>{html.escape(WATCH_HINT)} refreshes it while traffic runs</i></div></div>"
        )
        return {"text/html": page, "text/plain": text}
    except Exception as exc:  # a repr must never raise in a notebook
        return {"text/plain": f"{short} (figures unavailable: {type(exc).__name__}: {exc})"}


def _svg_body(svg: str) -> str:
    """An SVG document without its XML prologue, to sit inside HTML."""
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size, unit = float(n), "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"


def _worker_cells(row: Mapping[str, Any]) -> tuple[str, str, str, str, str]:
    tags = "GPU" if row.get("gpu") else "-"
    memory = f"{_bytes(row.get('memory'))} / {_bytes(row.get('memory_limit'))}"
    replicas = ", ".join(row.get("replicas") or []) or "-"
    return (_short(str(row["address"])), str(row.get("name", "")), tags, memory, replicas)


WORKER_HEAD = ("worker", "name", "tags", "memory (used / limit)", "replicas (deployment/stage)")


def workers_table(rows: list[Mapping[str, Any]]) -> str:
    """``Cluster.worker_report()`` rows as a fixed-width text table.

    Examples
    --------
    >>> print(workers_table([{"address": "tcp://h:1", "name": "gpu-0", "gpu": True, "memory": 2048,
    ...                       "memory_limit": None, "replicas": ["d/s0"]}]))
    worker  name   tags  memory (used / limit)  replicas (deployment/stage)
    h:1     gpu-0  GPU   2.0 KiB / -            d/s0
    """
    table = [WORKER_HEAD, *(_worker_cells(r) for r in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(WORKER_HEAD) - 1)]
    return "\n".join(
        ("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1]).rstrip() for r in table
    )


def workers_html(rows: list[Mapping[str, Any]]) -> str:
    """``Cluster.worker_report()`` rows as an HTML table."""
    head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in WORKER_HEAD)
    body = "".join(
        "<tr>" + "".join(f"<td style='text-align:left'>{html.escape(c)}</td>" for c in _worker_cells(r)) + "</tr>"
        for r in rows
    )
    return f"<table class='cf-workers'><tr>{head}</tr>{body}</table>"


def cluster_bundle(cluster: Any) -> dict[str, str]:
    """The cluster's notebook repr: address, dashboard link and its workers with tags, memory and
    the replicas they host. Never raises."""
    short = repr(cluster)
    name = f"cf.{type(cluster).__name__}"
    address = html.escape(str(getattr(cluster, "scheduler_address", "?")))
    try:
        link = cluster.dashboard_link
        dash = f'<a href="{html.escape(link)}" target="_blank">dashboard</a>' if link else "no dashboard"
        rows = cluster.worker_report()
    except Exception as exc:  # closed, or the scheduler is gone: the repr must not raise
        reason = f"workers unavailable: {type(exc).__name__}: {exc}"
        return {
            "text/html": f"<div><b>{name}</b> at <code>{address}</code>: {html.escape(reason)}</div>",
            "text/plain": f"{short} ({reason})",
        }
    gpu = sum(1 for r in rows if r["gpu"])
    summary = f"{len(rows)} workers ({gpu} GPU-tagged)"
    page = f"<div><b>{name}</b> at <code>{address}</code>: {summary}; {dash}{workers_html(rows)}</div>"
    return {"text/html": page, "text/plain": f"{short}: {summary}\n{workers_table(rows)}"}
