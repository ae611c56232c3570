"""Seeds: every random draw of the study is derive_seed(cfg.seed, stream, ...), so it is a function of the config.

Streams: 0 random masks, 1 runs (initial weights, shuffles, augmentation), 2-3 retraining (stage 3),
4 balanced masks, 5 label flips.
"""

import numpy as np


def derive_seed(base: int, *stream: int) -> int:
    """A 63-bit seed from (base, stream...), independent across streams: the run index gives the seed."""
    state = np.random.SeedSequence([base, *stream]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))
