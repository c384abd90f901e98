"""Suite-wide settings.

One OpenMP thread for torch, here and in every subprocess a test starts: the models under test
are tiny, and on a two-core machine with anything else running, a second intra-op thread spins
and waits, making a 300-step run 10-80x slower. Users keep torch's own default.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
