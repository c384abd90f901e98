"""`pytest --knightctl-ops`: every registered op's gradient verdict as a test item of its own.

Installed with knightctl as a `pytest11` plugin, so a plugin author puts knightctl's gradient
checks in their CI with one flag. Without the flag it adds nothing and imports nothing beyond
pytest: it is loaded into every pytest run where knightctl is installed.

The ops are the ones `knightctl gradcheck` would check: plugins from `./plugins` (or
`--knightctl-plugins-dir`, or KNIGHTCTL_PLUGINS_DIR) and from installed packages. Each op is one
item, `knightctl-ops::gradcheck[NAME]`: it fails with the report `knightctl gradcheck` prints, is
skipped with the reason when nothing could be compared ("n/a"), and passes only when a check
compared something and nothing failed. A plugin that does not load is a failing item too, so its
ops are never silently left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from knightctl.gradcheck.report import OpReport
    from knightctl.plugins.registry import OpDef

COLLECTOR_ID = "knightctl-ops"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("knightctl", "knightctl gradient checks")
    group.addoption(
        "--knightctl-ops", action="store_true", help="check every registered op's gradients, one test item per op"
    )
    group.addoption(
        "--knightctl-op", action="append", default=[], metavar="NAME", help="check only this op (repeatable)"
    )
    group.addoption(
        "--knightctl-plugins-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="load plugins from DIR instead of ./plugins (repeatable)",
    )
    group.addoption(
        "--knightctl-device", default="cpu", metavar="DEVICE", help="cpu, cuda, cuda:N, mps or auto (default: cpu)"
    )
    group.addoption(
        "--knightctl-method",
        default="auto",
        type=str,
        choices=("auto", "exact", "fast"),
        help="how the Jacobians are compared, as `knightctl gradcheck --method` (default: auto)",
    )


@pytest.hookimpl(tryfirst=True)  # before -k and -m deselect, so they apply to these items too
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("knightctl_ops") or config.getoption("knightctl_op"):
        items.extend(KnightctlOps.from_parent(session, name=COLLECTOR_ID, nodeid=COLLECTOR_ID).collect())


class KnightctlOps(pytest.Collector):
    """The registered ops (and the plugins that failed to load), as items."""

    def collect(self) -> list[pytest.Item]:
        from knightctl.errors import KnightctlError
        from knightctl.gradcheck.preflight import ops_named
        from knightctl.plugins.loader import load
        from knightctl.plugins.system import PluginSettings

        config = self.config
        here = config.invocation_params.dir
        settings = PluginSettings.from_env().override(
            dirs=[here / d for d in config.getoption("knightctl_plugins_dir")]
        )
        try:
            system = load(settings)
            ops = ops_named(system, config.getoption("knightctl_op"))
        except KnightctlError as exc:
            raise pytest.UsageError(f"knightctl: {exc}") from exc
        items: list[pytest.Item] = [
            PluginLoadItem.from_parent(
                self, name=f"plugin[{info.name}]", failure=f"{info.name} ({info.origin}): {info.error}"
            )
            for info in system.failures
        ]
        items += [OpItem.from_parent(self, name=f"gradcheck[{op.name}]", op=op) for op in ops]
        return items


class OpFailed(Exception):
    """Raised by an op's item when its verdict is "failed"; carries the report to show."""

    def __init__(self, report: OpReport) -> None:
        super().__init__(report.label)
        self.report = report


class OpItem(pytest.Item):
    """One op's gradient check: every check `knightctl gradcheck` runs, on the op's own samples."""

    def __init__(self, *, op: OpDef, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.op = op

    def runtest(self) -> None:
        from knightctl.errors import KnightctlError
        from knightctl.gradcheck.checks import check_op
        from knightctl.training.devices import resolve_device

        try:
            device = str(resolve_device(self.config.getoption("knightctl_device")).device)
        except KnightctlError as exc:
            raise pytest.UsageError(f"knightctl: {exc}") from exc
        report = check_op(self.op, device=device, method=self.config.getoption("knightctl_method"))
        self.user_properties.append(("knightctl_verdict", report.verdict))
        if report.verdict == "failed":
            raise OpFailed(report)
        if report.verdict == "n/a":
            reasons = [
                check.detail for check in report.checks if check.status in ("unsupported", "skipped") and check.detail
            ]
            pytest.skip(f"{report.label}: {reasons[0] if reasons else 'n/a: nothing was compared'}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, OpFailed):
            report = excinfo.value.report
            checks = ", ".join(f"{check.check} {check.status}" for check in report.checks)
            return "\n".join([f"{report.label} ({report.plugin}): {checks}", *report.explain()])
        return str(super().repr_failure(excinfo, style=style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"gradcheck {self.op.name}"


class PluginLoadItem(pytest.Item):
    """A plugin that failed to load: its ops were not checked, which must not read as a pass."""

    def __init__(self, *, failure: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.failure = failure

    def runtest(self) -> None:
        raise PluginNotLoaded(self.failure)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, PluginNotLoaded):
            return f"plugin {excinfo.value}\nIt failed to load, so the ops it registers were not checked."
        return str(super().repr_failure(excinfo, style=style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.name


class PluginNotLoaded(Exception):
    """Raised by a failed plugin's item."""
