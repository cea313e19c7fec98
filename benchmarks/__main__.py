from __future__ import annotations

from benchmarks.suite import main

raise SystemExit(main())
