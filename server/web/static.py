from pathlib import Path

# static/ sits beside the package in the repository (the widget issue fills it).
STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
