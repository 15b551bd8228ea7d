#!/usr/bin/env python
"""Same as vitjax-convert (vitjax/cli/convert.py), for a checkout without the package installed."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitjax.cli.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
