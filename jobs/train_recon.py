"""Ray job entrypoint of `vf3d train-recon` (the logic lives in vf3d.jobs).

ray job submit --working-dir . -- python jobs/train_recon.py --config jobs/configs/train-recon-debug.yaml [vf3d train-recon options]
vf3d submit train-recon --address http://HEAD:8265 --config jobs/configs/train-recon-debug.yaml --wait
"""

import sys

from vf3d.jobs import main

if __name__ == "__main__":
    sys.exit(main("train-recon"))
