"""Schemathesis against the live servers' own OpenAPI documents: no 5xx, and answers match the document."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import LiveServer

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def schemathesis(url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("schemathesis")
    return subprocess.run(
        [
            str(exe),
            "run",
            f"{url}/openapi.json",
            "--checks",
            CHECKS,
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--workers",
            "1",
            "--no-color",
            "--generation-database",
            "none",
            "--suppress-health-check",
            "too_slow,filter_too_much",
            "--request-timeout",
            "60",
            *args,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_openapi_document_covers_every_endpoint(classifier_server: LiveServer) -> None:
    doc = httpx.get(f"{classifier_server.url}/openapi.json").json()
    for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/{model_name}", "/metrics", "/classify"):
        assert path in doc["paths"]
    infer = doc["paths"]["/v2/models/{model_name}/infer"]["post"]
    assert {"200", "400", "404", "429", "503", "504"} <= set(infer["responses"])
    assert "422" not in infer["responses"]  # bad payloads are 400s, as the protocol says


@pytest.mark.timeout(900)
def test_schemathesis_finds_no_server_error_on_the_classifier(classifier_server: LiveServer, tmp_path: Path) -> None:
    result = schemathesis(classifier_server.url, tmp_path, "--phases", "examples,coverage,fuzzing", "--max-time", "30")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert generated, result.stdout[-3000:]
    assert int(generated.group(1)) >= 200
    assert "404 responses" not in result.stdout  # the fuzzer reached the model, not just unknown names


@pytest.mark.timeout(900)
def test_schemathesis_finds_no_server_error_on_the_openai_api(lm_server: LiveServer, tmp_path: Path) -> None:
    # Schema-valid generation requests may ask for thousands of tokens (minutes each on a CPU), so the
    # generating endpoints get only schema-violating payloads here; the openai-client tests cover valid ones.
    reads = schemathesis(lm_server.url, tmp_path, "--include-method", "GET", "--max-time", "10")
    assert reads.returncode == 0, reads.stdout[-6000:] + reads.stderr[-2000:]
    writes = schemathesis(
        lm_server.url,
        tmp_path,
        "--include-method",
        "POST",
        "--mode",
        "negative",
        "--phases",
        "examples,fuzzing",
        "--max-time",
        "20",
    )
    assert writes.returncode == 0, writes.stdout[-6000:] + writes.stderr[-2000:]
