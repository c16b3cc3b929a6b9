"""docs/operations.md stays true to the chart: its YAML parses, it covers every top-level value."""

from __future__ import annotations

import re

import yaml

from tests.chart.helm import CHART, ROOT

DOC = (ROOT / "docs" / "operations.md").read_text()


def test_yaml_blocks_parse() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC, re.S)
    assert len(blocks) >= 4
    for block in blocks:
        docs = list(yaml.safe_load_all(block))
        assert all(isinstance(d, dict) and d.get("kind") for d in docs), block[:200]


def test_every_top_level_value_is_documented() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    table = DOC.split("### Values at a glance", 1)[1].split("\n## ", 1)[0]
    missing = [key for key in values if key not in {"nameOverride", "fullnameOverride"} and f"`{key}" not in table]
    assert not missing, f"docs/operations.md 'Values at a glance' lacks {missing}"


def test_argocd_cm_block_holds_both_health_checks() -> None:
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", DOC, re.S) if "argocd-cm" in b)
    data = yaml.safe_load(block)["data"]
    for kind in ("DeepSeekTraining", "DeepSeekInference"):
        script = (CHART / "argocd" / "deepseek.ai" / kind / "health.lua").read_text()
        assert data[f"resource.customizations.health.deepseek.ai_{kind}"].strip() == script.strip()
