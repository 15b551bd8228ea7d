#!/usr/bin/env python
"""Same as vitjax-plot-schedules (vitjax/cli/plot_schedules.py), without installing vitjax."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitjax.cli.plot_schedules import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
