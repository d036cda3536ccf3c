"""Start several ranks with torchrun; say in one line why a launch failed (:mod:`cli.launch`).

``make train NPROC=...`` runs it:

    python -m scripts.launch --nproc-per-node 4 --standalone -m scripts.train ...
"""

import sys

from cli.launch import main

if __name__ == "__main__":
    sys.exit(main())
