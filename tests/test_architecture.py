"""The algorithm stays importable without any GUI toolkit."""

import ast
import subprocess
import sys
from pathlib import Path

import napari_stemcluster

CORE = Path(napari_stemcluster.__file__).parent / "core"
FORBIDDEN = (
    "napari",
    "qtpy",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
    "magicgui",
    "superqt",
    "vispy",
)


def test_core_source_imports_no_gui_toolkit():
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                if name.split(".")[0] in FORBIDDEN:
                    offenders.append(f"{path.name}: {name}")
    assert not offenders, offenders
    assert len(list(CORE.glob("*.py"))) > 5  # the check really looked at files


def test_importing_core_loads_no_gui_module():
    code = (
        "import sys, napari_stemcluster.core, napari_stemcluster;"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
