"""The teacher's outputs remembered by the exact bytes of each input image.

A distillation asks the teacher for its logits on every training batch, and a validation for its
outputs on the same held-out images every time. The teacher never changes during a run and its
deploy net runs in the TEST phase (no dropout; BatchNorm with its stored statistics), so an input
that comes again (the next epoch, a mirror drawn a second time, the validation images) gives the
very same outputs: Caffe's forward pass of one image does not depend on the others in its batch.
``Memo`` wraps an evaluate.Runner, keys each image by a 128-bit BLAKE2b digest of its float32
bytes, and runs the teacher only on the images it has not seen (one forward pass of those, as a
smaller batch). Random crops seldom repeat and simply miss (the Fashion-MNIST teachers' train_val
shifts by up to 4 pixels and mirrors: 50 forms of each image, so there it mostly spares the
validations).

On Table 3's GoogLeNet-Slim the teacher's forward pass was two thirds of a distillation
iteration's time (py-spy, 0.13 s per iteration of batch 32 on two cores); on a training set that
is seen several times over that share mostly goes.

The memory is bounded (``max_bytes``, default MAX_BYTES): once full, new images are still
answered, just no longer kept.
"""
from __future__ import annotations

import hashlib
import time

import numpy as np

#: The most the remembered outputs take (bytes of their arrays).
MAX_BYTES = 512 * 2 ** 20


class Memo:
    """An evaluate.Runner whose ``run`` and ``logits_of`` answer from memory for images seen before
    (bit for bit the arrays the runner gave); every other attribute is the runner's."""

    def __init__(self, runner, max_bytes: int = MAX_BYTES):
        self._runner = runner
        self._rows: dict[bytes, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._bytes = 0
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self.seconds = 0.0           # in the teacher's forward passes

    def __getattr__(self, name):
        return getattr(self._runner, name)

    @staticmethod
    def key(image: np.ndarray) -> bytes:
        a = np.ascontiguousarray(image, dtype=np.float32)
        return hashlib.blake2b(a.tobytes() + str(a.shape).encode(), digest_size=16).digest()

    def _answers(self, x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        keys = [self.key(image) for image in x]
        missing = list(dict.fromkeys(k for k in keys if k not in self._rows))
        fresh: dict[bytes, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        if missing:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}      # a batch may hold an image twice
            xm = np.stack([x[first[k]] for k in missing])
            started = time.perf_counter()
            scores, logp = self._runner.run(xm)
            logits = self._runner.logits_after_run(len(xm), scores, logp)
            self.seconds += time.perf_counter() - started
            for j, k in enumerate(missing):
                row = (scores[j].copy(), logp[j].copy(), logits[j].copy())
                fresh[k] = row
                size = sum(a.nbytes for a in row) + len(k)
                if self._bytes + size <= self.max_bytes:
                    self._rows[k] = row
                    self._bytes += size
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return [fresh[k] if k in fresh else self._rows[k] for k in keys]

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = self._answers(x)
        return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])

    def logits_of(self, x: np.ndarray) -> np.ndarray:
        return np.stack([r[2] for r in self._answers(x)])

    def scores_and_logits(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = self._answers(x)
        return np.stack([r[0] for r in rows]), np.stack([r[2] for r in rows])

    def room_for(self, images: int, outputs: int) -> bool:
        """Whether ``images`` more inputs of ``outputs`` values each would all be kept."""
        return self._bytes + images * (3 * 4 * outputs + 16) <= self.max_bytes

    @property
    def stats(self) -> dict:
        """How often the memory answered: images seen again (hits), images run (misses), bytes kept,
        seconds in the teacher's forward passes."""
        return {"hits": self.hits, "misses": self.misses, "bytes": self._bytes, "images_kept": len(self._rows),
                "teacher_seconds": round(self.seconds, 2)}
