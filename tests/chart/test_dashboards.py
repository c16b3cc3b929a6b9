"""The Grafana dashboards shipped in the chart: well-formed, importable, wired to the data source variable,
and rendered into sidecar ConfigMaps byte for byte."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.chart.helm import CHART, by_kind

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
REQUIRED = {
    "deepseek-training.json": [
        "loss",
        "samples / s",
        "tokens / s",
        "gpu utilisation",
        "running",
        "failed",
        "succeeded",
    ],
    "deepseek-inference.json": ["requests / s", "request latency", "batch size", "queue depth", "errors"],
    "deepseek-operator.json": ["reconciles", "operator up"],
}


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def all_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def test_the_three_dashboards_exist() -> None:
    assert [p.name for p in DASHBOARDS] == sorted(REQUIRED)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    board = load(path)
    assert board["uid"] == path.stem
    assert board["title"].startswith("DeepSeek / ")
    assert "deepseek" in board["tags"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = all_panels(board)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, f"{panel['title']} is wider than the grid"
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel.get("description"), f"{panel['title']} has no description"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["expr"].strip()
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            assert var["datasource"]["uid"] == "${datasource}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_covers_what_the_issue_asks(path: Path) -> None:
    titles = " | ".join(p["title"].lower() for p in all_panels(load(path)))
    for topic in REQUIRED[path.name]:
        assert topic in titles, f"{path.name}: no panel about {topic!r} ({titles})"


def test_dashboard_uids_are_unique() -> None:
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids))


def test_configmaps_carry_the_files_verbatim(rendered_all_on: list[dict[str, Any]]) -> None:
    maps = by_kind(rendered_all_on, "ConfigMap")
    data = {key: value for cm in maps for key, value in cm["data"].items()}
    assert sorted(data) == [p.name for p in DASHBOARDS]
    for path in DASHBOARDS:
        assert json.loads(data[path.name]) == load(path)
