"""``cf.explore``: an interactive optimizer panel for notebooks (stock ipywidgets).

Toggle the optimizer's options, step through its passes, and watch the physical plan and the
reasons behind every rewrite update in place.
"""

from __future__ import annotations

import dataclasses
import html
from typing import TYPE_CHECKING, Any

from cloudflow_nb.optimize import Optimize
from cloudflow_nb.optimize.passes import PASSES
from cloudflow_nb.viz import DOT_MISSING_HINT, dot_available

if TYPE_CHECKING:
    from cloudflow_nb.flow import Flow

__all__ = ["PlanExplorer", "explore", "widget_bundle"]


# numeric controls show their whole option name (the default label width cuts "max_batch_size" short)
_NUMBER_STYLE: dict[str, Any] = {"style": {"description_width": "initial"}, "layout": {"width": "auto"}}


def explore(flow: Flow, options: Optimize | None = None) -> PlanExplorer:
    """An optimizer panel for ``flow``: option toggles, a pass selector, the plan and its reasons.

    Examples
    --------
    >>> import cloudflow_nb as cf
    >>> panel = cf.explore(cf.Flow("f", x=int).map(abs, names="x").map(str, names="y"))
    >>> panel.controls["fusion"].value = False
    >>> len(panel.plan.stages)
    2
    """
    return PlanExplorer(flow, options or Optimize())


class PlanExplorer:
    """The widgets behind :func:`explore`; ``.widget`` is the ipywidgets box to display.

    Attributes
    ----------
    controls : dict
        One widget per ``cf.Optimize`` field, plus ``"pass"`` (the optimizer pass to stop after).
    plan : cf.Plan
        The plan for the current settings.
    """

    def __init__(self, flow: Flow, options: Optimize) -> None:
        import ipywidgets as w

        self.flow = flow
        self.controls: dict[str, Any] = {}
        for field in dataclasses.fields(Optimize):
            value = getattr(options, field.name)
            if field.name == "hedge_after":  # off, a percentile or milliseconds: typed as text
                text = "" if value is None else value if isinstance(value, str) else f"{value:g}"
                control = w.Text(value=text, placeholder="off, p90 or ms", description=field.name, **_NUMBER_STYLE)
            elif isinstance(value, bool):
                control = w.Checkbox(value=value, description=field.name, indent=False)
            elif isinstance(value, int):
                control = w.BoundedIntText(value=value, min=1, max=256, description=field.name, **_NUMBER_STYLE)
            else:
                control = w.BoundedFloatText(
                    value=value, min=0.0, max=10_000.0, description=field.name, **_NUMBER_STYLE
                )
            self.controls[field.name] = control
        self.controls["pass"] = w.Dropdown(options=list(PASSES), value=PASSES[-1], description="stop after")
        self.graph = w.HTML(layout=w.Layout(flex="0 0 auto"))
        # the plan text keeps its line breaks and scrolls sideways instead of wrapping mid-word
        self.text = w.HTML(layout=w.Layout(flex="1 1 auto", min_width="0", overflow="auto"))
        self.error = w.HTML()
        for control in self.controls.values():
            control.observe(self._update, names="value")
        toggles = w.HBox([c for c in self.controls.values() if isinstance(c, w.Checkbox)])
        numbers = w.HBox([c for c in self.controls.values() if not isinstance(c, w.Checkbox)])
        self.widget = w.VBox([toggles, numbers, self.error, w.HBox([self.graph, self.text])])
        self.plan = flow.optimize(options)
        self._update()

    def options(self) -> Optimize:
        """The ``cf.Optimize`` the controls describe."""
        values = {f.name: self.controls[f.name].value for f in dataclasses.fields(Optimize)}
        values["hedge_after"] = _hedge_after(values["hedge_after"])
        return Optimize(**values)

    def _update(self, change: Any = None) -> None:
        try:
            self.plan = self.flow.optimize(self.options(), stage=self.controls["pass"].value)
        except Exception as exc:  # show bad settings in the panel, keep the last good plan
            self.error.value = f"<span style='color:#b00'>{html.escape(str(exc))}</span>"
            return
        self.error.value = ""
        self.text.value = f"<pre style='font-size:11px; white-space:pre'>{html.escape(self.plan.explain())}</pre>"
        self.graph.value = _svg_or_hint(self.plan)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return widget_bundle(lambda: self.widget, repr(self))

    def __repr__(self) -> str:
        return f"<cf.PlanExplorer {self.flow.name!r}: {len(self.plan.stages)} stages>"


def widget_bundle(widget: Any, text: str) -> dict[str, Any]:
    """The display bundle of the ipywidget ``widget()``, or ``text`` if that fails; never raises."""
    try:
        return widget()._repr_mimebundle_()  # type: ignore[no-any-return]
    except Exception:  # a repr must never raise in a notebook
        return {"text/plain": text}


def _svg_or_hint(plan: Any) -> str:
    if not dot_available():
        return f"<p><i>{html.escape(DOT_MISSING_HINT)}</i></p>"
    try:
        return str(plan.show_graph().pipe(format="svg", encoding="utf-8"))
    except Exception as exc:
        return f"<p><i>graph not drawn: {html.escape(str(exc))}</i></p>"


def _hedge_after(text: str) -> str | float | None:
    """The hedge control's text as ``Optimize(hedge_after=...)`` takes it (``Optimize`` checks it)."""
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return text
