"""`python -m tensorrt_llm_dwdp ...` is `trtllm-dwdp ...`."""

import sys

from .commands.main import main

sys.exit(main())
