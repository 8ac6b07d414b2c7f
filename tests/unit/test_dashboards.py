"""Grafana dashboards and provisioning, checked as JSON and YAML and, for every query, by promtool's PromQL parser.

Dashboards are rendered from a configuration whose replicas, scrape interval and backup age differ from the
defaults (NON_DEFAULT), so a dashboard that ignores the model fails here. Tests are parametrized over the
dashboard files, so a failure names its file.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.config import StackConfig, load_config
from infra.render.dashboards import DATASOURCE_VARIABLE, dashboards, grafana_provisioning, panel_queries

NON_DEFAULT: dict[str, dict[str, Any]] = {
    "api": {"replicas": 3},
    "monitoring": {"scrape_interval_s": 20, "finished_runs_window_s": 7200},
    "backups": {"max_age_hours": 30},
}
UIDS = {
    "prefect-overview.json": "prefect-stack-overview",
    "prefect-api.json": "prefect-stack-api",
    "prefect-postgres.json": "prefect-stack-postgres",
    "prefect-redis.json": "prefect-stack-redis",
    "prefect-backups.json": "prefect-stack-backups",
    "prefect-host.json": "prefect-stack-host",
}
FILES = list(UIDS)
VARIABLE_REF = f"${{{DATASOURCE_VARIABLE}}}"
GRID_COLUMNS = 24
PROMETHEUS_URL = "http://127.0.0.1:29090"
JAEGER_URL = "http://127.0.0.1:26686"
DASHBOARDS_DIR = "/var/lib/grafana/dashboards/prefect-stack"

promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (bootstrap --dev)")


@pytest.fixture
def config() -> StackConfig:
    return load_config(**NON_DEFAULT)


@pytest.fixture
def rendered(config: StackConfig) -> dict[str, dict[str, Any]]:
    return dashboards(config)


@pytest.fixture(params=FILES)
def board(request: pytest.FixtureRequest, rendered: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return rendered[request.param]


@pytest.fixture
def provisioning(config: StackConfig) -> dict[str, Any]:
    files = grafana_provisioning(config, PROMETHEUS_URL, JAEGER_URL, DASHBOARDS_DIR)
    return {name: yaml.safe_load(text) for name, text in files.items()}


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel but the rows, collapsed rows' panels included."""
    found = []
    for panel in board["panels"]:
        found += [p for p in [panel, *panel.get("panels", [])] if p["type"] != "row"]
    return found


def _variable(board: dict[str, Any]) -> dict[str, Any]:
    return next(v for v in board["templating"]["list"] if v["name"] == DATASOURCE_VARIABLE)


def _datasources(provisioning: dict[str, Any]) -> list[dict[str, Any]]:
    datasources: list[dict[str, Any]] = provisioning["datasources/prefect-stack.yaml"]["datasources"]
    return datasources


class TestDashboardSet:
    def test_one_dashboard_per_concern(self, rendered: dict[str, dict[str, Any]]) -> None:
        assert sorted(rendered) == sorted(FILES)

    def test_uids_are_unique(self, rendered: dict[str, dict[str, Any]]) -> None:
        uids = [board["uid"] for board in rendered.values()]
        assert len(set(uids)) == len(uids)

    def test_titles_are_unique(self, rendered: dict[str, dict[str, Any]]) -> None:
        titles = [board["title"] for board in rendered.values()]
        assert len(set(titles)) == len(titles)

    @pytest.mark.parametrize("name", FILES)
    def test_uid_is_stable(self, rendered: dict[str, dict[str, Any]], name: str) -> None:
        assert rendered[name]["uid"] == UIDS[name]


class TestDashboard:
    def test_uid_fits_grafana(self, board: dict[str, Any]) -> None:
        assert 0 < len(board["uid"]) <= 40

    def test_tagged(self, board: dict[str, Any]) -> None:
        assert board["tags"] == ["prefect-stack"]

    def test_refresh(self, board: dict[str, Any]) -> None:
        assert board["refresh"] == "30s"

    def test_time_range(self, board: dict[str, Any]) -> None:
        assert board["time"] == {"from": "now-6h", "to": "now"}

    def test_schema_version(self, board: dict[str, Any]) -> None:
        # What the pinned SDK emits (Grafana 10.1's schema); Grafana migrates it forward on load.
        assert board["schemaVersion"] >= 36

    def test_prometheus_datasource_variable(self, board: dict[str, Any]) -> None:
        variable = _variable(board)
        assert (variable["type"], variable["query"]) == ("datasource", "prometheus")

    def test_json_serialisable(self, board: dict[str, Any]) -> None:
        assert json.loads(json.dumps(board)) == board


class TestPanels:
    def test_every_panel_has_a_query(self, board: dict[str, Any]) -> None:
        assert [p["title"] for p in _panels(board) if not p.get("targets")] == []

    def test_every_expression_is_set(self, board: dict[str, Any]) -> None:
        assert [title for title, expr in panel_queries(board) if not expr.strip()] == []

    def test_panels_read_the_datasource_variable(self, board: dict[str, Any]) -> None:
        assert [p["title"] for p in _panels(board) if p["datasource"]["uid"] != VARIABLE_REF] == []

    def test_queries_read_the_datasource_variable(self, board: dict[str, Any]) -> None:
        targets = [(p["title"], t) for p in _panels(board) for t in p["targets"]]
        assert [title for title, t in targets if t["datasource"]["uid"] != VARIABLE_REF] == []

    def test_ref_ids_are_unique_per_panel(self, board: dict[str, Any]) -> None:
        for panel in _panels(board):
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(set(ref_ids)) == len(ref_ids), panel["title"]

    def test_panel_titles_are_unique(self, board: dict[str, Any]) -> None:
        # panel_queries names a query by its panel's title: it must say which panel.
        titles = [p["title"] for p in _panels(board)]
        assert sorted(t for t in titles if titles.count(t) > 1) == []

    def test_panel_ids_are_unique(self, board: dict[str, Any]) -> None:
        ids = [p["id"] for p in board["panels"]]
        assert len(set(ids)) == len(ids)

    def test_panels_fit_the_grid(self, board: dict[str, Any]) -> None:
        outside = [p["title"] for p in board["panels"] if p["gridPos"]["x"] + p["gridPos"]["w"] > GRID_COLUMNS]
        assert outside == []

    def test_no_panel_overlaps_another(self, board: dict[str, Any]) -> None:
        def cells(panel: dict[str, Any]) -> set[tuple[int, int]]:
            pos = panel["gridPos"]
            return {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}

        overlaps = [(a["title"], b["title"]) for a, b in itertools.combinations(board["panels"], 2)
                    if cells(a) & cells(b)]
        assert overlaps == []

    @promtool
    def test_expressions_parse_as_promql(self, board: dict[str, Any], tmp_path: Path) -> None:
        queries = panel_queries(board)
        rules = {"groups": [{"name": "check", "rules": [
            {"record": f"check:{i}", "expr": expr} for i, (_title, expr) in enumerate(queries)
        ]}]}
        path = tmp_path / "rules.yml"
        path.write_text(yaml.safe_dump(rules))
        result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
        # promtool names the failing rule check:N; map N back to its panel.
        legend = "\n".join(f"check:{i} = {title}: {expr}" for i, (title, expr) in enumerate(queries))
        assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{legend}"


class TestModelFlowsIntoDashboards:
    def _panel(self, board: dict[str, Any], title: str) -> dict[str, Any]:
        return next(p for p in _panels(board) if p["title"] == title)

    def test_replica_count_colors_the_api_stat(self, rendered: dict[str, dict[str, Any]]) -> None:
        panel = self._panel(rendered["prefect-api.json"], "Replicas in service")
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[-1] == {"value": NON_DEFAULT["api"]["replicas"], "color": "green"}

    def test_backup_age_limit_is_the_alert_threshold(self, rendered: dict[str, dict[str, Any]]) -> None:
        panel = self._panel(rendered["prefect-backups.json"], "Newest verified backup")
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[-1]["value"] == NON_DEFAULT["backups"]["max_age_hours"] * 3600

    def test_rate_window_is_four_scrape_intervals(self, rendered: dict[str, dict[str, Any]]) -> None:
        window = f"[{4 * NON_DEFAULT['monitoring']['scrape_interval_s']}s]"
        rates = [expr for board in rendered.values() for _title, expr in panel_queries(board) if "rate(" in expr]
        assert rates
        assert [expr for expr in rates if window not in expr] == []


class TestWorkPoolPanels:
    """The overview's work-pool row: what a pool's workers do with its runs, one panel per question."""

    @pytest.fixture
    def queries(self, rendered: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for title, expr in panel_queries(rendered["prefect-overview.json"]):
            found.setdefault(title, []).append(expr)
        return found

    @pytest.mark.parametrize(("title", "metric"), [
        ("Online workers by work pool", "prefect_work_pool_online_workers"),
        ("Work queue backlog", "prefect_work_queue_backlog"),
        ("Pickup delay", "prefect_work_pool_pickup_delay_seconds"),
        ("Run outcomes by work pool", "prefect_flow_runs_finished_recent"),
    ])
    def test_panel_reads_its_metric_by_pool(self, queries: dict[str, list[str]], title: str, metric: str) -> None:
        assert [expr for expr in queries[title] if metric not in expr or "by (work_pool" not in expr] == []

    def test_pickup_delay_shows_the_median_and_the_tail(self, queries: dict[str, list[str]]) -> None:
        quantiles = [expr.partition('quantile="')[2].partition('"')[0] for expr in queries["Pickup delay"]]
        assert quantiles == ["0.5", "0.99"]

    def test_run_outcomes_are_by_final_state(self, queries: dict[str, list[str]]) -> None:
        [expr] = queries["Run outcomes by work pool"]
        assert "sum by (work_pool, state)" in expr

    def test_the_window_is_the_models(self, rendered: dict[str, dict[str, Any]]) -> None:
        panel = next(p for p in _panels(rendered["prefect-overview.json"]) if p["title"] == "Pickup delay")
        assert f"finished_runs_window_s = {NON_DEFAULT['monitoring']['finished_runs_window_s']}s" in panel[
            "description"]


def test_panel_queries_include_collapsed_rows() -> None:
    board = {"panels": [{"type": "row", "title": "Row", "panels": [
        {"type": "timeseries", "title": "Inner", "targets": [{"expr": "up"}]},
    ]}]}
    assert panel_queries(board) == [("Inner", "up")]


class TestProvisioning:
    @pytest.mark.parametrize("name", ["datasources/prefect-stack.yaml", "dashboards/prefect-stack.yaml"])
    def test_file_parses_as_provisioning(self, provisioning: dict[str, Any], name: str) -> None:
        assert provisioning[name]["apiVersion"] == 1

    def test_prometheus_datasource(self, provisioning: dict[str, Any]) -> None:
        prometheus = next(d for d in _datasources(provisioning) if d["uid"] == "prometheus")
        assert (prometheus["type"], prometheus["url"]) == ("prometheus", PROMETHEUS_URL)

    def test_prometheus_is_the_default(self, provisioning: dict[str, Any]) -> None:
        # With no saved selection the datasource variable picks the default datasource of its type.
        assert [d["uid"] for d in _datasources(provisioning) if d.get("isDefault")] == ["prometheus"]

    def test_scrape_interval_sets_the_minimum_step(self, provisioning: dict[str, Any]) -> None:
        prometheus = next(d for d in _datasources(provisioning) if d["uid"] == "prometheus")
        assert prometheus["jsonData"]["timeInterval"] == f"{NON_DEFAULT['monitoring']['scrape_interval_s']}s"

    def test_jaeger_datasource(self, provisioning: dict[str, Any]) -> None:
        jaeger = next(d for d in _datasources(provisioning) if d["uid"] == "jaeger")
        assert (jaeger["type"], jaeger["url"]) == ("jaeger", JAEGER_URL)

    def test_no_jaeger_without_url(self, config: StackConfig) -> None:
        files = grafana_provisioning(config, PROMETHEUS_URL, None, DASHBOARDS_DIR)
        datasources = yaml.safe_load(files["datasources/prefect-stack.yaml"])["datasources"]
        assert [d["uid"] for d in datasources] == ["prometheus"]

    def test_datasource_uids_are_unique(self, provisioning: dict[str, Any]) -> None:
        uids = [d["uid"] for d in _datasources(provisioning)]
        assert len(set(uids)) == len(uids)

    def test_provisioned_datasources_serve_the_dashboard(self, board: dict[str, Any],
                                                         provisioning: dict[str, Any]) -> None:
        provisioned = _datasources(provisioning)
        wanted_type = _variable(board)["query"]
        assert wanted_type in {d["type"] for d in provisioned}
        # Anything not read through the variable must name a provisioned uid.
        refs = [p["datasource"] for p in _panels(board)] + [t["datasource"] for p in _panels(board)
                                                            for t in p["targets"]]
        literal = {ref["uid"] for ref in refs if not ref["uid"].startswith("$")}
        assert literal <= {d["uid"] for d in provisioned}

    def test_dashboard_provider(self, provisioning: dict[str, Any]) -> None:
        (provider,) = provisioning["dashboards/prefect-stack.yaml"]["providers"]
        assert (provider["type"], provider["folder"], provider["options"]["path"]) == (
            "file", "Prefect stack", DASHBOARDS_DIR)


class TestKubernetesApiReplicas:
    """On Kubernetes nothing scrapes the API replicas (job prefect-api): their panels read kube-state-metrics and
    cAdvisor, scoped to the stack's namespace, its API Deployment's pods and their Prefect container."""

    @pytest.fixture
    def board(self) -> dict[str, Any]:
        config = load_config(target="kubernetes", kubernetes={"name": "flows", "namespace": "data"}, **NON_DEFAULT)
        return dashboards(config, kubernetes=True)["prefect-api.json"]

    def test_no_query_reads_the_api_scrape_job(self, board: dict[str, Any]) -> None:
        assert [expr for _title, expr in panel_queries(board) if "prefect-api" in expr] == []

    @pytest.mark.parametrize("metric", ["kube_deployment_status_replicas_available", "kube_pod_container_status_ready",
                                        "container_memory_working_set_bytes", "container_cpu_usage_seconds_total"])
    def test_reads_the_cluster_series(self, board: dict[str, Any], metric: str) -> None:
        assert any(metric in expr for _title, expr in panel_queries(board))

    def test_replica_series_are_the_api_containers_of_the_stack(self, board: dict[str, Any]) -> None:
        pods = 'namespace="data",pod=~"flows-api-[a-z0-9]+-[a-z0-9]+",container="api"'
        replica_queries = [expr for _title, expr in panel_queries(board)
                           if "container_" in expr or "kube_pod_" in expr]
        assert len(replica_queries) == 3 and all(pods in expr for expr in replica_queries)

    def test_availability_of_the_stacks_deployment(self, board: dict[str, Any]) -> None:
        [expr] = [e for _title, e in panel_queries(board) if "kube_deployment_status_replicas_available" in e]
        assert 'namespace="data",deployment="flows-api"' in expr

    def test_cpu_rate_spans_two_kubelet_scrapes(self, board: dict[str, Any]) -> None:
        [expr] = [e for _title, e in panel_queries(board) if "container_cpu_usage_seconds_total" in e]
        assert "[120s]" in expr

    def test_the_other_targets_keep_the_scrape(self, rendered: dict[str, dict[str, Any]]) -> None:
        assert any('up{job="prefect-api"}' in expr for _title, expr in panel_queries(rendered["prefect-api.json"]))

    @promtool
    def test_expressions_parse_as_promql(self, board: dict[str, Any], tmp_path: Path) -> None:
        TestPanels().test_expressions_parse_as_promql(board, tmp_path)
