"""pytest plugin: one real control plane per test session, shared by every test.

Fixtures (register with `pytest_plugins = ["deepseek_testbed.pytest_plugin"]`):

- `kube_api` (session): a started `ControlPlane` (etcd + kube-apiserver). Attributes and helpers: `kubeconfig`,
  `server`, `ca_file`, `bin_dir`, `workdir`, `log_dir`, `kubectl(*args, input=None, check=True)`,
  `client()` / `async_client()` (lightkube), `user_kubeconfig(user, groups)`,
  `service_account_kubeconfig(namespace, name)`, `create_namespace()`, `helm(*args)`.
- `kube_cluster` (session): the same object after `start_cluster()`: kube-controller-manager, kube-scheduler,
  kwok and the fake nodes (`nodes`), started the first time a test asks for it.
- `namespace` (function): a fresh, uniquely named namespace (with its `default` ServiceAccount), deleted after
  the test.

Missing binaries are built first (tools/testbed/build.sh, ~10 min cold), never skipped. When a test that
used the control plane fails, the tail of every component's log written during that test is attached to its
report; full logs stay under the printed work directory. `--testbed-attach DIR` (or DEEPSEEK_TESTBED_ATTACH)
uses a control plane started by `python -m deepseek_testbed up --workdir DIR` instead of starting one.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from deepseek_testbed.binaries import ensure_binaries
from deepseek_testbed.controlplane import ControlPlane, dns_label

_FIXTURES = frozenset({"kube_api", "kube_cluster", "namespace"})
_CACHED_LINE = "[testbed] all binaries cached"


class _State:
    """Per-session plugin state (kept in config.stash, so nested pytest runs do not share it)."""

    def __init__(self) -> None:
        self.control_plane: ControlPlane | None = None
        self.offsets: dict[str, dict[str, int]] = {}


_STATE = pytest.StashKey[_State]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("deepseek-testbed", "real Kubernetes control plane (deepseek_testbed)")
    group.addoption(
        "--testbed-attach",
        default=os.environ.get("DEEPSEEK_TESTBED_ATTACH"),
        metavar="DIR",
        help="use the control plane that `python -m deepseek_testbed up --workdir DIR` runs "
        "(env DEEPSEEK_TESTBED_ATTACH)",
    )
    group.addoption(
        "--testbed-log-lines",
        type=int,
        default=40,
        metavar="N",
        help="lines of each component's log attached to a failed test's report (default 40)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_STATE] = _State()


class _BuildProgress:
    """Relays build.sh output to the terminal, except the one-line 'all cached' notice."""

    def write(self, text: str) -> int:
        if not text.startswith(_CACHED_LINE):
            sys.stderr.write(text)
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture(scope="session")
def _testbed_control_plane(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    state = request.config.stash[_STATE]
    attach = request.config.getoption("--testbed-attach")
    if attach:
        cp = ControlPlane.attach(Path(attach))
    else:
        capman = request.config.pluginmanager.getplugin("capturemanager")
        # Show a cold build's progress live instead of letting a 10-minute build look like a hang.
        if capman is not None:
            with capman.global_and_fixture_disabled():
                binaries = ensure_binaries(progress=_BuildProgress())
        else:
            binaries = ensure_binaries(progress=_BuildProgress())
        cp = ControlPlane(tmp_path_factory.mktemp("testbed"), binaries=binaries)
        atexit.register(cp.stop)  # also on an interrupted session; stop() is idempotent
    state.control_plane = cp
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def kube_api(_testbed_control_plane: ControlPlane) -> ControlPlane:
    """etcd + kube-apiserver (TLS, RBAC, ServiceAccount admission on), shared by the whole session."""
    return _testbed_control_plane


@pytest.fixture(scope="session")
def kube_cluster(_testbed_control_plane: ControlPlane) -> ControlPlane:
    """kube_api plus kube-controller-manager, kube-scheduler and kwok with fake GPU/CPU nodes."""
    _testbed_control_plane.start_cluster()
    return _testbed_control_plane


@pytest.fixture
def namespace(kube_api: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test (plus a random suffix), deleted afterwards."""
    label = dns_label(request.node.name)
    name = kube_api.create_namespace(prefix=request.node.name[:40], labels={"testbed.deepseek.ai/test": label})
    yield name
    kube_api.delete_namespace(name)


def _uses_testbed(item: pytest.Item) -> bool:
    names = getattr(item, "fixturenames", ())
    return bool(_FIXTURES.intersection(names))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    state = item.config.stash[_STATE]
    if state.control_plane is not None and _uses_testbed(item):
        # Remember where each log ended, so a failure shows only what was logged during this test.
        state.offsets[item.nodeid] = state.control_plane.log_offsets()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    state = item.config.stash[_STATE]
    cp = state.control_plane
    if cp is None or not report.failed or not _uses_testbed(item):
        return report
    lines = int(item.config.getoption("--testbed-log-lines"))
    since = state.offsets.get(item.nodeid, {})
    recent = cp.log_tails(lines, since=since)
    overall = cp.log_tails(lines)
    for name, text in recent.items():
        if text.strip():
            report.sections.append((f"testbed {name} log (during {report.when}, last {lines} lines)", text))
        elif overall.get(name, "").strip():
            report.sections.append((f"testbed {name} log (quiet during the test; last {lines} lines)", overall[name]))
    report.sections.append(("testbed logs", f"full component logs: {cp.log_dir}"))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    cp = config.stash[_STATE].control_plane
    if cp is not None:
        timings = ", ".join(f"{k}={v}s" for k, v in cp.timings.items())
        terminalreporter.write_line(f"deepseek-testbed: component logs in {cp.log_dir} ({timings or 'attached'})")
