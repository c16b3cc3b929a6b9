"""The chart installs exactly the CRDs in crds/ (generated from the API models), never a drifted copy."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.chart.helm import CHART, ROOT, Helm, Yaml12Loader, by_kind

CHART_CRDS = CHART / "files" / "crds"


def test_chart_copy_is_byte_identical_to_crds_dir() -> None:
    source = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    copy = {p.name: p.read_bytes() for p in CHART_CRDS.glob("*.yaml")}
    assert source, "crds/ is empty"
    assert sorted(copy) == sorted(source), "the chart's CRD files differ from crds/: run `make crds`"
    stale = [name for name in source if copy[name] != source[name]]
    assert not stale, f"charts/deepseek-operator/files/crds is out of date for {stale}: run `make crds`"


def test_rendered_crds_equal_the_source(rendered_defaults: list[dict[str, Any]]) -> None:
    """Only metadata labels and the keep annotation are added; the rest is crds/ (read as Go reads YAML)."""
    rendered = {d["metadata"]["name"]: d for d in by_kind(rendered_defaults, "CustomResourceDefinition")}
    for path in (ROOT / "crds").glob("*.yaml"):
        source = yaml.load(path.read_text(), Loader=Yaml12Loader)
        out = dict(rendered.pop(source["metadata"]["name"]))
        src_meta, out_meta = source.pop("metadata"), out.pop("metadata")
        assert out == source, f"{path.name}: rendered CRD differs from the source"
        assert out_meta["name"] == src_meta["name"]
        assert src_meta.get("labels", {}).items() <= out_meta["labels"].items()
        assert set(out_meta.get("annotations", {})) - set(src_meta.get("annotations", {})) == {
            "helm.sh/resource-policy"
        }
    assert not rendered, f"CRDs the chart renders that crds/ lacks: {sorted(rendered)}"


def test_make_crds_refreshes_the_chart_copy(tmp_path: Path) -> None:
    """`make crds` is the one command that regenerates crds/ and the chart's copy (run here on a scratch tree)."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ncrds:\n", 1)[1].split("\n\n", 1)[0]
    assert "cp crds/*.yaml charts/deepseek-operator/files/crds/" in recipe
    tree = tmp_path / "repo"
    (tree / "crds").mkdir(parents=True)
    (tree / "charts" / "deepseek-operator" / "files" / "crds").mkdir(parents=True)
    (tree / "crds" / "x.yaml").write_text("new\n")
    (tree / "charts" / "deepseek-operator" / "files" / "crds" / "x.yaml").write_text("old\n")
    (tree / "charts" / "deepseek-operator" / "files" / "crds" / "gone.yaml").write_text("removed kind\n")
    copy_lines = [line.strip() for line in recipe.splitlines() if line.strip().startswith(("rm ", "cp "))]
    subprocess.run(["bash", "-c", " && ".join(copy_lines)], cwd=tree, check=True)
    assert (tree / "charts" / "deepseek-operator" / "files" / "crds" / "x.yaml").read_text() == "new\n"
    assert not (tree / "charts" / "deepseek-operator" / "files" / "crds" / "gone.yaml").exists()


def test_crds_are_not_in_helms_install_only_folder() -> None:
    """A chart-level crds/ folder would be installed once and never upgraded: the chart must not have one."""
    assert not (CHART / "crds").exists()


def test_chart_renders_its_own_copy(helm: Helm, tmp_path: Path) -> None:
    """What the chart installs comes from files/crds (so the byte comparison above is what keeps it honest)."""
    import shutil

    copy = tmp_path / "deepseek-operator"
    shutil.copytree(CHART, copy)
    target = copy / "files" / "crds" / "deepseek.ai_deepseektrainings.yaml"
    target.write_text(target.read_text().replace("- dstrain", "- dst"))
    docs = helm.render(tmp_path, chart=copy)
    crd = next(
        d for d in by_kind(docs, "CustomResourceDefinition") if d["metadata"]["name"].startswith("deepseektrainings")
    )
    source = yaml.load((ROOT / "crds" / target.name).read_text(), Loader=Yaml12Loader)
    assert crd["spec"]["names"]["shortNames"] != source["spec"]["names"]["shortNames"]
