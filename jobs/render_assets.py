"""Ray job entrypoint of `vf3d render-assets` (the logic lives in vf3d.jobs).

ray job submit --working-dir . -- python jobs/render_assets.py --config jobs/configs/render-assets-debug.yaml [vf3d render-assets options]
vf3d submit render-assets --address http://HEAD:8265 --config jobs/configs/render-assets-debug.yaml --wait
"""

import sys

from vf3d.jobs import main

if __name__ == "__main__":
    sys.exit(main("render-assets"))
