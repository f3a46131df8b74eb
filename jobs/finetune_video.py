"""Ray job entrypoint of `vf3d finetune-video` (the logic lives in vf3d.jobs).

ray job submit --working-dir . -- python jobs/finetune_video.py --config jobs/configs/finetune-video-debug.yaml [vf3d finetune-video options]
vf3d submit finetune-video --address http://HEAD:8265 --config jobs/configs/finetune-video-debug.yaml --wait
"""

import sys

from vf3d.jobs import main

if __name__ == "__main__":
    sys.exit(main("finetune-video"))
