"""Ray job entrypoint of `vf3d evaluate` (the logic lives in vf3d.jobs).

ray job submit --working-dir . -- python jobs/evaluate.py --config jobs/configs/evaluate-debug.yaml [vf3d evaluate options]
vf3d submit evaluate --address http://HEAD:8265 --config jobs/configs/evaluate-debug.yaml --wait
"""

import sys

from vf3d.jobs import main

if __name__ == "__main__":
    sys.exit(main("evaluate"))
