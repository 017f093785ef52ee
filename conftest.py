"""Test configuration shared by every test and notebook: the suite is hermetic.

Under pytest, load_pretrained_gpt2 always returns the stand-in (shared.gpt2_weights.STANDIN_ENV),
whatever the network, so the committed notebook outputs are reproduced online and offline. The
notebook kernels that nbval starts inherit this environment. A learner running a notebook by
hand does not have it set and gets real GPT-2.
"""

import os

from shared.gpt2_weights import STANDIN_ENV

os.environ[STANDIN_ENV] = "1"
