"""The IPython magics, in IPython's in-process test shell."""

from __future__ import annotations

import shutil

import pytest
from IPython.core.error import UsageError
from IPython.testing.globalipapp import get_ipython as get_test_ipython
from IPython.utils.capture import capture_output

import cloudflow_nb as cf
from cloudflow_nb.viz import DOT_MISSING_HINT

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="needs the Graphviz dot program")

BUILD = """\
import cloudflow_nb as cf
def double(row):
    return row["x"] * 2
src = cf.Flow("demo", x=int)
doubled = src.map(double, names={"y": int})
out = doubled.filter(lambda row: row["y"] > 2)
"""


@pytest.fixture(scope="module")
def ip():
    shell = get_test_ipython()
    shell.run_line_magic("load_ext", "cloudflow_nb")
    yield shell
    shell.run_line_magic("unload_ext", "cloudflow_nb")


@pytest.fixture(autouse=True)
def clean_namespace(ip):
    before = set(ip.user_ns)
    yield
    for name in set(ip.user_ns) - before:
        del ip.user_ns[name]


@pytest.fixture
def no_dot(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))


def outputs(cap) -> list[dict]:
    return [o.data for o in cap.outputs]


def test_magics_are_registered(ip):
    magics = ip.magics_manager.magics
    assert "flow" in magics["cell"]
    assert "explain" in magics["line"]
    assert "graph" in magics["line"]


def test_unload_and_reload(ip):
    ip.run_line_magic("unload_ext", "cloudflow_nb")
    try:
        assert "flow" not in ip.magics_manager.magics["cell"]
        assert "explain" not in ip.magics_manager.magics["line"]
    finally:
        ip.run_line_magic("load_ext", "cloudflow_nb")
    assert "flow" in ip.magics_manager.magics["cell"]


# -- %%flow ---------------------------------------------------------------------------------------------


def test_flow_cell_runs_the_cell_and_shows_the_last_flow(ip, no_dot):
    with capture_output() as cap:
        ip.run_cell_magic("flow", "", BUILD)
    assert isinstance(ip.user_ns["out"], cf.Flow)
    (data,) = outputs(cap)
    assert "filter" in data["text/plain"]  # the logical plan of `out`, the last flow assigned
    assert ip.user_ns["out"].explain(optimized=False) in data["text/plain"]
    assert DOT_MISSING_HINT in data["text/plain"]


@needs_dot
@pytest.mark.exe
def test_flow_cell_draws_svg_with_dot(ip):
    with capture_output() as cap:
        ip.run_cell_magic("flow", "", BUILD)
    (data,) = outputs(cap)
    assert "<svg" in data["image/svg+xml"]


def test_flow_cell_named_variable(ip):
    with capture_output() as cap:
        ip.run_cell_magic("flow", "doubled --text", BUILD)
    assert cap.stdout == ip.user_ns["doubled"].explain(optimized=False) + "\n"
    assert "filter" not in cap.stdout


def test_flow_cell_optimized_text(ip):
    with capture_output() as cap:
        ip.run_cell_magic("flow", "out --optimized --text", BUILD)
    assert cap.stdout == ip.user_ns["out"].explain() + "\n"


def test_flow_cell_last_expression_that_is_a_flow(ip):
    cell = "import cloudflow_nb as cf\ncf.Flow('expr', x=int).map(abs, names='y')\n"
    with capture_output() as cap:
        ip.run_cell_magic("flow", "-t", cell)
    assert cap.stdout.startswith("logical plan of flow 'expr'")


def test_flow_cell_ignores_flows_in_nested_scopes(ip):
    cell = BUILD + "def helper():\n    inner = src.map(double, names='z')\n    return inner\n"
    with capture_output() as cap:
        ip.run_cell_magic("flow", "--text", cell)
    assert cap.stdout == ip.user_ns["out"].explain(optimized=False) + "\n"


def test_flow_cell_with_tuple_assignment_and_rankdir(ip, no_dot):
    cell = BUILD + "a, b = out, doubled\n"
    with capture_output() as cap:
        ip.run_cell_magic("flow", "--rankdir lr", cell)
    (data,) = outputs(cap)
    assert "logical plan of flow 'demo'" in data["text/plain"]


def test_flow_cell_lambda_labels_point_at_the_cell(ip):
    with capture_output() as cap:
        ip.run_cell_magic("flow", "--text", BUILD)
    assert "<lambda at cell:6>" in cap.stdout


def test_flow_cell_without_a_flow_is_a_usage_error(ip):
    with pytest.raises(UsageError, match=r"no cf\.Flow"):
        ip.run_cell_magic("flow", "", "x = 1\n")
    assert ip.user_ns["x"] == 1  # the cell still ran


def test_flow_cell_named_variable_that_is_not_a_flow(ip):
    with pytest.raises(UsageError, match=r"'x' is a int, not a cf\.Flow"):
        ip.run_cell_magic("flow", "x", "x = 1\n")


def test_flow_cell_named_variable_that_does_not_exist(ip):
    with pytest.raises(UsageError, match="no variable named 'nothing'"):
        ip.run_cell_magic("flow", "nothing", "x = 1\n")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--rankdir XX", "invalid choice"),
        ("--bogus", "unrecognized arguments"),
        ("a b", "unrecognized arguments"),
        ("1abc", "not a variable name"),
    ],
)
def test_flow_cell_bad_arguments(ip, line, message):
    with pytest.raises(UsageError, match=message):
        ip.run_cell_magic("flow", line, "y = 2\n")
    assert "y" not in ip.user_ns  # bad arguments: the cell did not run


def test_flow_cell_errors_propagate_and_fail_the_cell(ip):
    with capture_output():
        result = ip.run_cell("%%flow\nraise ValueError('boom')\n")
    assert not result.success
    assert isinstance(result.error_in_exec, ValueError)


def test_flow_cell_build_errors_fail_the_cell(ip):
    with capture_output():
        result = ip.run_cell("%%flow\nimport cloudflow_nb as cf\ncf.Flow('f', x=int).groupby('nope')\n")
    assert isinstance(result.error_in_exec, cf.SchemaError)


def test_flow_cell_usage_error_through_run_cell(ip):
    with capture_output():
        result = ip.run_cell("%%flow --rankdir XX\nz = 1\n")
    assert not result.success


def test_flow_cell_runs_magics_inside_the_cell(ip):
    with capture_output() as cap:
        ip.run_cell_magic("flow", "--text", BUILD + "%explain out --logical\n")
    assert cap.stdout.count("logical plan of flow 'demo'") == 2


# -- %explain and %graph ----------------------------------------------------------------------------


@pytest.fixture
def built(ip):
    with capture_output():
        ip.run_cell(BUILD)
    return ip.user_ns["out"]


def test_explain_prints_the_optimized_plan(ip, built):
    with capture_output() as cap:
        result = ip.run_line_magic("explain", "out")
    assert result is None
    assert cap.stdout == built.explain() + "\n"


def test_explain_logical(ip, built):
    with capture_output() as cap:
        ip.run_line_magic("explain", "out --logical")
    assert cap.stdout == built.explain(optimized=False) + "\n"


def test_explain_a_plan(ip, built):
    ip.user_ns["plan"] = built.optimize()
    with capture_output() as cap:
        ip.run_line_magic("explain", "plan")
        ip.run_line_magic("explain", "plan -l")
    assert cap.stdout == built.explain() + "\n" + built.explain(optimized=False) + "\n"


def test_explain_a_dotted_name(ip, built):
    ip.user_ns["pipeline"] = type("Pipeline", (), {"out": built})()
    with capture_output() as cap:
        ip.run_line_magic("explain", "pipeline.out -l")
    assert cap.stdout == built.explain(optimized=False) + "\n"


def test_explain_through_run_cell(ip, built):
    with capture_output() as cap:
        result = ip.run_cell("%explain doubled -l")
    assert result.success
    assert "map double" in cap.stdout


def test_explain_prefers_the_callers_local_scope(ip, built):
    out = cf.Flow("local_flow", x=int)  # shadows the shell's `out`
    with capture_output() as cap:
        ip.run_line_magic("explain", "out --logical")
    assert "local_flow" in cap.stdout
    assert out is not built


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "arguments are required|the following arguments"),
        ("missing", "no variable named 'missing'"),
        ("out.nope", "'out' has no attribute 'nope'"),
        ("out.name", "'out.name' is a str, not a cf.Flow or a cf.Plan"),
        ("out --bogus", "unrecognized arguments"),
        ("out[0]", "not a variable name"),
    ],
)
def test_explain_bad_arguments(ip, built, line, message):
    with pytest.raises(UsageError, match=message):
        ip.run_line_magic("explain", line)


def test_graph_without_dot_falls_back_to_text(ip, built, no_dot):
    with capture_output() as cap:
        ip.run_line_magic("graph", "out")
    (data,) = outputs(cap)
    assert set(data) == {"text/plain"}
    assert built.explain() in data["text/plain"]
    assert DOT_MISSING_HINT in data["text/plain"]


def test_graph_logical_without_dot(ip, built, no_dot):
    with capture_output() as cap:
        ip.run_line_magic("graph", "out --logical")
    (data,) = outputs(cap)
    assert built.explain(optimized=False) in data["text/plain"]


@needs_dot
@pytest.mark.exe
@pytest.mark.parametrize("line", ["out", "out --logical", "out -l --rankdir LR", "plan", "plan --logical"])
def test_graph_draws_svg(ip, built, line):
    ip.user_ns["plan"] = built.optimize()
    with capture_output() as cap:
        ip.run_line_magic("graph", line)
    (data,) = outputs(cap)
    assert "<svg" in data["image/svg+xml"]


def test_graph_source(ip, built):
    with capture_output() as cap:
        ip.run_line_magic("graph", "out --logical --source --rankdir LR")
    expected = built.show_graph(optimized=False)
    expected.graph_attr["rankdir"] = "LR"
    assert cap.stdout == expected.source
    assert "rankdir=LR" in cap.stdout


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("out --rankdir XX", "invalid choice"),
        ("nothing", "no variable named 'nothing'"),
        ("src.schema", "is a Schema, not a cf.Flow or a cf.Plan"),
    ],
)
def test_graph_bad_arguments(ip, built, line, message):
    with pytest.raises(UsageError, match=message):
        ip.run_line_magic("graph", line)
