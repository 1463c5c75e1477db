"""Worker interpreter of `writer.write_dataset(..., workers=N)`; not a user entry point.

Reads one JSON request on stdin (`tmp_root`, `seed`, `frames_per_scene`, `params` (a
`SyntheticParams` as a dict), `jobs`: `[[split, index], ...]`), renders and writes those pairs, and
prints the number of bytes written.
"""

from __future__ import annotations

import json
import sys

import cv2

from radblur_jax.data.synthetic.render import SyntheticParams
from radblur_jax.data.synthetic.writer import write_pair


def main() -> int:
    cv2.setNumThreads(1)  # one core per worker
    request = json.load(sys.stdin)
    params = SyntheticParams(**request["params"])
    total = sum(write_pair(request["tmp_root"], split, int(index), request["seed"], params,
                           request["frames_per_scene"]) for split, index in request["jobs"])
    print(total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
