"""The repository root, and its `src/` on `sys.path` so that the bench runs without the
editable install too. Every bench module that imports `cluster_spark` imports this first
(it sorts with the third-party imports, before the first-party `cluster_spark` ones)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # runnable without the editable install too
    sys.path.insert(0, str(ROOT / "src"))
