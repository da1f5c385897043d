"""The layering is checked by a tool: ``lint-imports`` (contracts in ``.importlinter``) passes, and
the order clients load where FastAPI, Starlette and uvicorn are not installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
WEB_SERVER = ("fastapi", "starlette", "uvicorn")


def test_import_contracts_are_kept() -> None:
    # --no-cache: a cached graph can miss a package that has just been added. The contracts are
    # read from .importlinter in the working directory.
    run = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, f"lint-imports found broken contracts:\n{run.stdout}\n{run.stderr}"
    assert "0 broken" in run.stdout, run.stdout


# Installed packages cannot be uninstalled for one test: a finder first on sys.meta_path refuses
# them instead, as an interpreter without them would.
_WITHOUT_WEB_SERVER = f"""
import sys
from importlib.abc import MetaPathFinder

BLOCKED = {WEB_SERVER!r}


class NotInstalled(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
try:
    import fastapi  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("the blocker does not block")
"""


def _run_without_web_server(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_WEB_SERVER + code], cwd=ROOT, capture_output=True, text=True
    )


def test_the_order_clients_import_without_fastapi() -> None:
    run = _run_without_web_server(
        "import ordermesh.client, ordermesh.client.http, ordermesh.client.grpc, ordermesh.problems\n"
        "from ordermesh.client import AsyncOrdermeshClient, OrdermeshClient, OrdersGrpcClient\n"
        "from ordermesh.problems import error_from_problem\n"
        "from ordermesh import errors\n"
        'assert isinstance(error_from_problem(404, b\'{"detail": "gone"}\'), errors.NotFound)\n'
        f"assert not [m for m in sys.modules if m.split('.')[0] in {WEB_SERVER!r}]\n"
        "print('ok')\n"
    )
    assert run.returncode == 0 and run.stdout == "ok\n", run.stderr


def test_the_blocker_would_catch_a_client_that_needs_fastapi() -> None:
    # The check above can fail: the FastAPI side of the problem documents does not load.
    run = _run_without_web_server("import ordermesh.http.problems\n")
    assert run.returncode != 0 and "No module named 'fastapi'" in run.stderr
