from pathlib import Path

# The page and the widget: static/ beside the package, in a checkout or an editable install.
STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
