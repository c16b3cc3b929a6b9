"""Argo CD health checks (charts/deepseek-operator/argocd/<group>/<Kind>/health.lua) run on sample objects.

Each kind's health_test.yaml (Argo CD's own test format) lists sample objects with the status and message the
check must return. Every sample runs twice: in Debian's lua5.4 interpreter, and in Lua 5.1 (lupa's bundled
runtime) because Argo CD runs gopher-lua, which implements Lua 5.1: a 5.2+ construct would break in Argo CD
while passing in 5.4. The samples are also validated by the API models, so they stay real statuses.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deepseek_operator.api import DeepSeekInference, DeepSeekTraining

from tests.chart.helm import CHART, ROOT

ARGOCD = CHART / "argocd" / "deepseek.ai"
KINDS = {"DeepSeekTraining": DeepSeekTraining, "DeepSeekInference": DeepSeekInference}
VALID = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def lua_literal(value: Any) -> str:
    """A Lua expression for a JSON-like value, as Argo CD hands objects to health scripts (null becomes nil)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"not a JSON number: {value}")
        return repr(value)
    if isinstance(value, str):
        # Decimal escapes for every non-printable byte: valid in Lua 5.1 and 5.4 alike.
        body = "".join(
            ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "".join(f"\\{b}" for b in ch.encode()) for ch in value
        )
        return f'"{body}"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua_literal(str(k))}] = {lua_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot convert {type(value).__name__} to Lua")


def cases() -> list[Any]:
    out = []
    for kind in KINDS:
        spec = yaml.safe_load((ARGOCD / kind / "health_test.yaml").read_text())
        for case in spec["tests"]:
            out.append(pytest.param(kind, case, id=f"{kind}-{Path(case['inputPath']).stem}"))
    return out


def run_lua54(script: Path, obj: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    driver = tmp_path / "driver.lua"
    driver.write_text(
        f"obj = {lua_literal(obj)}\n"
        f"local check = assert(loadfile({lua_literal(str(script))}))\n"
        "local hs = check()\n"
        'io.write(hs.status or "", "\\n", hs.message or "")\n'
    )
    lua = shutil.which("lua5.4")
    assert lua, "lua5.4 is missing: scripts/setup.sh installs Debian's lua5.4 package"
    res = subprocess.run([lua, str(driver)], capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 0, res.stderr
    status, _, message = res.stdout.partition("\n")
    return {"status": status, "message": message}


def run_lua51(script: Path, obj: dict[str, Any]) -> dict[str, str]:
    from lupa import lua51

    rt = lua51.LuaRuntime(unpack_returned_tuples=True)
    rt.execute(f"obj = {lua_literal(obj)}")
    hs = rt.execute(script.read_text())
    return {"status": str(hs["status"]), "message": str(hs["message"] or "")}


@pytest.mark.parametrize(("kind", "case"), cases())
def test_health_check_on_sample(kind: str, case: dict[str, Any], tmp_path: Path) -> None:
    script = ARGOCD / kind / "health.lua"
    obj = yaml.safe_load((ARGOCD / kind / case["inputPath"]).read_text())
    assert obj["kind"] == kind
    KINDS[kind].model_validate(obj)  # the sample is a real object of this kind, status included
    expected = case["healthStatus"]
    assert expected["status"] in VALID
    assert run_lua54(script, obj, tmp_path) == expected
    assert run_lua51(script, obj) == expected


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_phase_has_a_sample(kind: str) -> None:
    """Each phase of the status model is covered by a sample (a new phase needs a decision and a test)."""
    phase_type = KINDS[kind].model_fields["status"].annotation
    model = next(a for a in getattr(phase_type, "__args__", ()) if a is not type(None))
    phases = set(model.model_fields["phase"].annotation.__args__[0].__args__)
    spec = yaml.safe_load((ARGOCD / kind / "health_test.yaml").read_text())
    seen = set()
    for case in spec["tests"]:
        status = yaml.safe_load((ARGOCD / kind / case["inputPath"]).read_text()).get("status") or {}
        if status.get("phase"):
            seen.add(status["phase"])
    assert phases <= seen, f"no sample for phases {sorted(phases - seen)}"


@pytest.mark.parametrize("kind", list(KINDS))
def test_unknown_phase_is_unknown(kind: str, tmp_path: Path) -> None:
    obj = {"apiVersion": "deepseek.ai/v1alpha1", "kind": kind, "metadata": {"name": "x", "generation": 1}}
    obj["status"] = {"phase": "Exploded", "observedGeneration": 1}
    result = run_lua54(ARGOCD / kind / "health.lua", obj, tmp_path)
    assert result == {"status": "Unknown", "message": "Unknown phase Exploded"}


def test_lua_literal_round_trips_through_lua(tmp_path: Path) -> None:
    value = {"a": [1, 2.5, 'x"y\\z\u00e9'], "b": {"c": True, "d": None}}
    script = tmp_path / "echo.lua"
    script.write_text(
        "return {status = obj.a[3], message = tostring(obj.a[2]) .. tostring(obj.b.c) .. tostring(obj.b.d)}"
    )
    expected = {"status": 'x"y\\z\u00e9', "message": "2.5truenil"}
    assert run_lua54(script, value, tmp_path) == expected
    assert run_lua51(script, value) == expected


def test_docs_show_the_same_scripts() -> None:
    """docs/operations.md shows the argocd-cm customisation; its Lua must be the shipped scripts, verbatim."""
    doc = (ROOT / "docs" / "operations.md").read_text()
    for kind in KINDS:
        key = f"resource.customizations.health.deepseek.ai_{kind}: |"
        assert key in doc, f"docs/operations.md lacks {key}"
        block = doc.split(key, 1)[1]
        lines = []
        for line in block.splitlines()[1:]:
            if line.strip() and not line.startswith("    "):
                break
            lines.append(line[4:])
        shown = "\n".join(lines).strip()
        assert shown == (ARGOCD / kind / "health.lua").read_text().strip(), f"{kind}: docs differ from health.lua"
    assert re.search(r"ServerSideApply=true", doc), "docs must recommend server-side apply"
