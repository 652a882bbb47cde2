"""Source lines a child process runs first so that every training batch arrives 0.3 s late: a kill then lands mid-run."""

SLOW_BATCHES = ("import time\n"
                "from mmvae import data\n"
                "real = data.batches\n"
                "def slow(*a, **k):\n"
                "  for b in real(*a, **k):\n"
                "    time.sleep(0.3)\n"
                "    yield b\n"
                "data.batches = slow\n")
