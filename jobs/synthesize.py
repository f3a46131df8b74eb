"""Ray job entrypoint of `vf3d synthesize` (the logic lives in vf3d.jobs).

ray job submit --working-dir . -- python jobs/synthesize.py --config jobs/configs/synthesize-debug.yaml [vf3d synthesize options]
vf3d submit synthesize --address http://HEAD:8265 --config jobs/configs/synthesize-debug.yaml --wait
"""

import sys

from vf3d.jobs import main

if __name__ == "__main__":
    sys.exit(main("synthesize"))
