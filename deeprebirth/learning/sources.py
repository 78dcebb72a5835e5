"""Image sources: every SOURCE a command takes, by name (no Caffe needed).

A *source* is an indexed collection of images, labelled or not, named by one string (``SOURCE``):

* a directory of images, read recursively in sorted order; when every image sits inside a
  first-level sub-directory, those sub-directories are the classes (sorted names -> labels 0, 1, ...);
  otherwise the images are unlabelled;
* a Caffe list file (``ImageData``'s ``source``): one ``path [label]`` per line, paths relative
  to the list file's folder (or absolute); blank lines and ``#`` comments are skipped;
* an LMDB of Caffe ``Datum`` records (raw C x H x W pixels in BGR order, as ``convert_imageset``
  writes them, or encoded image files): a directory holding ``data.mdb``, or that file;
* ``fashion-mnist`` / ``fashion-mnist:train`` (60,000 images) or ``fashion-mnist:test`` (10,000),
  read from Debian's ``dataset-fashion-mnist`` (28 x 28 gray, labelled 0-9).

Any of these takes a Python-slice suffix for a subset: ``fashion-mnist:test[:500]``,
``list.txt[100:200]``, ``images/[::10]`` (applied after the sorted order, before ``--limit``).

Every source returns images as ``H x W x C`` uint8 arrays, C = 1 (gray) or 3 (RGB). Decoding is
Pillow's. :class:`deeprebirth.learning.preprocess.Preprocess` turns them into the float32
``N x C x H x W`` batches a Caffe net takes; ``Source.batches`` is the one loop that does so.
"""
from __future__ import annotations

import gzip
import io as _pyio
import os
import re
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from deeprebirth.caffe import proto as pb
from deeprebirth.errors import RebirthError
from deeprebirth.learning.preprocess import Preprocess, _pil

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm", ".pbm", ".pnm", ".jfif"}
FASHION_MNIST_DIR = Path(os.environ.get("DEEPREBIRTH_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")


# ============================================================================================
# Sources


def decode_image(data: bytes | str | os.PathLike, name: str) -> np.ndarray:
    """Decode an image file (path or bytes) with Pillow -> H x W x 1 (gray) or H x W x 3 (RGB) uint8."""
    Image = _pil()
    try:
        src = _pyio.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
        with Image.open(src) as im:
            im.load()
            if im.mode in ("L", "1", "I", "I;16", "I;16B", "I;16L", "F", "LA", "La"):
                arr = np.asarray(im.convert("L"))[:, :, None]
            else:
                arr = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise RebirthError(f"{name}: no such file") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = str(exc).replace("\n", " ") or type(exc).__name__
        raise RebirthError(f"{name}: cannot decode image ({reason})") from None
    return np.ascontiguousarray(arr)


class Source:
    """An indexed image collection, optionally labelled."""

    name: str = "<source>"
    has_labels: bool = False
    classes: tuple[str, ...] | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def image(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def label(self, i: int) -> int | None:
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}: {len(self)} images{', labelled' if self.has_labels else ''}>"

    def labels(self, indices: Sequence[int]) -> np.ndarray | None:
        if not self.has_labels:
            return None
        return np.array([self.label(int(i)) for i in indices], dtype=np.int64)

    def batches(self, pre: Preprocess, batch: int, *, train: bool = False, shuffle: bool = False, seed: int = 0,
                limit: int | None = None, loop: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """(N x C x H x W float32, labels int64 or None) batches over the first ``limit`` images.
        The last batch may be short unless ``loop`` (then batches are always full and the images
        repeat forever, in a new order per epoch when ``shuffle``). ``train`` turns on random crops
        and mirroring. Order and augmentation are reproducible from ``seed``."""
        if batch < 1:
            raise RebirthError(f"batch size {batch}: must be at least 1")
        n = len(self) if limit is None else min(int(limit), len(self))
        if n < 1:
            raise RebirthError(f"{self.name}: no images to read")
        order_rng, aug_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))

        def epoch():
            return order_rng.permutation(n) if shuffle else np.arange(n)

        def make(idx):
            return pre.apply([self.image(int(i)) for i in idx], train=train, rng=aug_rng), self.labels(idx)

        if not loop:
            order = epoch()
            for s in range(0, n, batch):
                yield make(order[s:s + batch])
            return
        pending: list[int] = []
        while True:
            for i in epoch():
                pending.append(int(i))
                if len(pending) == batch:
                    yield make(pending)
                    pending = []


def require_labels(source: Source, purpose: str) -> None:
    """A one-line error when ``source`` has no labels but ``purpose`` needs them."""
    if not source.has_labels:
        raise RebirthError(f"{source.name}: the images have no labels, but {purpose} needs them (use a folder "
                           "per class, a list file of 'path label' lines, an LMDB or fashion-mnist)")


class ImageFolder(Source):
    def __init__(self, root: Path):
        self.root = root
        files = sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                       key=lambda p: p.relative_to(root).as_posix())
        if not files:
            raise RebirthError(f"{root}: no images in this folder (looked for "
                               f"{', '.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))})")
        self.files = files
        self.name = str(root)
        rel = [p.relative_to(root).parts for p in files]
        self.has_labels = all(len(parts) >= 2 for parts in rel)
        self._labels = None
        if self.has_labels:
            self.classes = tuple(sorted({parts[0] for parts in rel}))
            index = {c: i for i, c in enumerate(self.classes)}
            self._labels = [index[parts[0]] for parts in rel]

    def __len__(self):
        return len(self.files)

    def image(self, i):
        return decode_image(self.files[i], str(self.files[i]))

    def label(self, i):
        return self._labels[i] if self._labels is not None else None


class ListFile(Source):
    """Caffe's ImageData list: ``path [label]`` per line (the label is the last field)."""

    def __init__(self, path: Path):
        self.name = str(path)
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise RebirthError(f"{path}: not a text list file of 'path [label]' lines") from None
        except OSError as exc:
            raise RebirthError(f"{path}: cannot read ({exc.strerror})") from None
        base = path.parent
        files, labels = [], []
        labelled = None
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(None, 1)
            label = None
            if len(parts) == 2:
                try:
                    label = int(parts[1])
                except ValueError:
                    raise RebirthError(f"{path}:{lineno}: expected 'path [label]' with an integer label, got "
                                       f"{line!r}") from None
                name = parts[0]
            else:
                name = line
            if labelled is None:
                labelled = label is not None
            elif labelled != (label is not None):
                raise RebirthError(f"{path}:{lineno}: {'no' if label is None else 'a'} label here, but the first "
                                   f"entry {'has one' if labelled else 'has none'}")
            f = Path(name) if Path(name).is_absolute() else base / name
            if not f.is_file():
                raise RebirthError(f"{path}:{lineno}: {f}: no such image file")
            files.append(f)
            labels.append(label)
        if not files:
            raise RebirthError(f"{path}: the list file names no images")
        self.files = files
        self.has_labels = bool(labelled)
        self._labels = labels

    def __len__(self):
        return len(self.files)

    def image(self, i):
        return decode_image(self.files[i], str(self.files[i]))

    def label(self, i):
        return self._labels[i]


_LMDB_ENVS: dict = {}


class LmdbSource(Source):
    """An LMDB of Caffe ``Datum`` records (what ``convert_imageset`` writes), read in key order.

    Raw datums hold C x H x W uint8 pixels, colour in BGR order (OpenCV's); they are returned as
    RGB. Encoded datums hold an image file, decoded with Pillow. ``float_data`` datums are returned
    as float32 arrays."""

    def __init__(self, path: Path):
        import lmdb  # noqa: PLC0415

        self.name = str(path)
        where = path if path.is_dir() else path.parent if path.name == "data.mdb" else path
        key = str(where.resolve())
        # py-lmdb opens an environment once per process: share it between sources.
        self.env = _LMDB_ENVS.get(key)
        if self.env is None:
            try:
                self.env = lmdb.open(key, subdir=where.is_dir(), readonly=True, lock=False, readahead=False,
                                     max_readers=64)
            except lmdb.Error as exc:
                raise RebirthError(f"{path}: not an LMDB ({exc})") from None
            _LMDB_ENVS[key] = self.env
        with self.env.begin() as txn:
            self.keys = [bytes(k) for k in txn.cursor().iternext(keys=True, values=False)]
        if not self.keys:
            raise RebirthError(f"{path}: the LMDB holds no records")
        self.has_labels = True
        self._label_cache: dict[int, int] = {}
        self._datum(0)  # checks that the records are Datums

    def __len__(self):
        return len(self.keys)

    def _datum(self, i: int) -> "pb.Datum":
        with self.env.begin() as txn:
            value = txn.get(self.keys[i])
        datum = pb.Datum()
        key = self.keys[i].decode("utf-8", "replace")
        try:
            datum.ParseFromString(value)
        except Exception:  # noqa: BLE001 -- protobuf's DecodeError
            raise RebirthError(f"{self.name}: record '{key}' is not a Caffe Datum") from None
        if not datum.encoded:
            size = datum.channels * datum.height * datum.width
            have = len(datum.data) or len(datum.float_data)
            if size == 0 or have != size:
                raise RebirthError(f"{self.name}: record '{key}' is not a Caffe Datum (channels x height x width "
                                   f"= {datum.channels}x{datum.height}x{datum.width}, {have} values)")
        self._label_cache[i] = int(datum.label)
        return datum

    def image(self, i):
        datum = self._datum(i)
        key = self.keys[i].decode("utf-8", "replace")
        if datum.encoded:
            return decode_image(datum.data, f"{self.name} record '{key}'")
        shape = (datum.channels, datum.height, datum.width)
        if datum.channels not in (1, 3):
            raise RebirthError(f"{self.name}: record '{key}' has {datum.channels} channels, expected 1 or 3")
        if len(datum.data):
            arr = np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
        else:
            arr = np.asarray(datum.float_data, dtype=np.float32).reshape(shape)
        arr = arr.transpose(1, 2, 0)
        if datum.channels == 3:
            arr = arr[:, :, ::-1]
        return np.ascontiguousarray(arr)

    def label(self, i):
        if i not in self._label_cache:
            self._datum(i)
        return self._label_cache[i]


def _read_idx(path: Path, magic: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise RebirthError(f"{path}: no such file (install Debian's dataset-fashion-mnist: `make install`)") from None
    except (OSError, EOFError) as exc:
        raise RebirthError(f"{path}: cannot read ({exc})") from None
    head = np.frombuffer(data[:4], dtype=">u4")
    if len(data) < 8 or int(head[0]) != magic:
        raise RebirthError(f"{path}: not an idx file (magic {magic} expected)")
    ndim = magic & 0xFF
    dims = tuple(int(d) for d in np.frombuffer(data[4:4 + 4 * ndim], dtype=">u4"))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise RebirthError(f"{path}: holds {body.size} bytes, its header says {list(dims)}")
    return body.reshape(dims)


class FashionMnist(Source):
    """Fashion-MNIST from Debian's dataset-fashion-mnist (idx files, gzip)."""

    FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}

    def __init__(self, split: str = "train", root: Path | None = None):
        if split not in self.FILES:
            raise RebirthError(f"fashion-mnist:{split}: unknown split (use fashion-mnist:train or fashion-mnist:test)")
        root = Path(root) if root is not None else FASHION_MNIST_DIR
        images, labels = self.FILES[split]
        self.images = _read_idx(root / images, 2051)
        self.labels_ = _read_idx(root / labels, 2049)
        if len(self.images) != len(self.labels_):
            raise RebirthError(f"{root}: {len(self.images)} images but {len(self.labels_)} labels")
        self.name = f"fashion-mnist:{split}"
        self.has_labels = True
        self.classes = FASHION_MNIST_CLASSES

    def __len__(self):
        return len(self.images)

    def image(self, i):
        return self.images[i][:, :, None]

    def label(self, i):
        return int(self.labels_[i])

    def labels(self, indices):
        return self.labels_[np.asarray(indices, dtype=np.int64)].astype(np.int64)


class Subset(Source):
    """Some images of another source, by index."""

    def __init__(self, base: Source, indices: Sequence[int] | range, name: str):
        self.base = base
        self.indices = indices
        self.name = name
        self.has_labels = base.has_labels
        self.classes = base.classes

    def __len__(self):
        return len(self.indices)

    def image(self, i):
        return self.base.image(self.indices[i])

    def label(self, i):
        return self.base.label(self.indices[i])

    def labels(self, indices):
        return self.base.labels([self.indices[int(i)] for i in indices])


class Unlabelled(Source):
    """Another source's images with its labels hidden: what a label-free step (distillation,
    ``recover``) trains and validates on, so no label reaches it even when the source has them."""

    def __init__(self, base: Source):
        self.base = base
        self.name = base.name
        self.has_labels = False
        self.classes = None

    def __len__(self):
        return len(self.base)

    def image(self, i):
        return self.base.image(i)


def unlabelled(source: Source | None) -> Source | None:
    """``source`` without its labels (None stays None)."""
    if source is None or not source.has_labels:
        return source
    return Unlabelled(source)


# ============================================================================================
# A validation slice held out of a training source

HOLDOUT_MAX = 2000       # held-out images at most (Table 3's validation set)
HOLDOUT_FRACTION = 10    # a tenth of the source ...
HOLDOUT_MIN = 300        # ... but no fewer than this (the standard error of 80 % on 300 images is 2.3 pt)
HOLDOUT_SHARE = 4        # and never more than a quarter of it: a source under 1,200 images is not split


def holdout_size(n: int) -> int:
    """How many of ``n`` training images to hold out for validation: min(HOLDOUT_MAX, n / 10), at
    least HOLDOUT_MIN; 0 (no split) when that would take more than a quarter of them."""
    held = min(HOLDOUT_MAX, max(n // HOLDOUT_FRACTION, HOLDOUT_MIN))
    return held if held * HOLDOUT_SHARE <= n else 0


def subset_spec(source: Source, positions: range) -> str | None:
    """The SOURCE string that opens the images at ``positions`` of ``source`` (its root's name with
    a ``[start:stop]`` suffix, slices of slices composed), or None when ``source`` is not one that
    ``open_source`` makes (a caller's own Source class, a subset by a list of indices)."""
    while True:
        if isinstance(source, Unlabelled):
            source = source.base
        elif isinstance(source, Subset) and isinstance(source.indices, range):
            positions = source.indices[positions.start:positions.stop:positions.step]
            source = source.base
        elif isinstance(source, (ImageFolder, ListFile, LmdbSource, FashionMnist)):
            step = f":{positions.step}" if positions.step != 1 else ""
            return f"{source.name}[{positions.start}:{positions.stop}{step}]"
        else:
            return None


def _positions(source: Source, positions: range, what: str) -> Subset:
    spec = subset_spec(source, positions)
    if isinstance(source, Subset) and isinstance(source.indices, range):   # one level, not a chain
        positions = source.indices[positions.start:positions.stop:positions.step]
        return Subset(source.base, positions, spec or f"{source.name} ({what})")
    return Subset(source, positions, spec or f"{source.name} ({what})")


def hold_out(source: Source) -> tuple[Source, Source | None]:
    """``source`` split into (training images, held-out images): ``holdout_size`` images held out,
    every k-th one (k = len // held) from the k-th on, so they spread over the whole source (a
    folder of class folders is sorted by class: its last images would be one class, never trained
    on); always the same ones, so a resumed run and a second command split alike. The held-out
    part is named by the SOURCE that opens it, when there is one (``fashion-mnist:train[:5000]``
    -> ``fashion-mnist:train[9:5000:10]``), so it can be given as a validation source by hand;
    the training part is named "SOURCE without HELD-OUT". A source too small to split comes back
    whole, with None."""
    n = len(source)
    held = holdout_size(n)
    if not held:
        return source, None
    k = n // held
    heldout = _positions(source, range(k - 1, k * held, k), f"every {k}th of its images, {held:,} in all")
    rest = [i for i in range(n) if i % k != k - 1 or i >= k * held]
    return Subset(source, rest, f"{source.name} without {heldout.name}"), heldout


_SLICE = re.compile(r"^(.*)\[(-?\d*):(-?\d*)(?::(-?\d*))?\]$")


def _exists(spec: str) -> bool:
    try:
        return Path(spec).exists()
    except (OSError, ValueError):
        return False


def open_source(spec: str, *, limit: int | None = None) -> Source:
    """Open a SOURCE: an image folder, a list file, an LMDB, or ``fashion-mnist[:train|:test]``,
    optionally with a ``[start:stop:step]`` subset suffix; ``limit`` keeps the first N images."""
    spec = str(spec)
    base_spec, sl = spec, None
    m = _SLICE.match(spec)
    if not m and spec.endswith("]") and "[" in spec and not _exists(spec):
        suffix = spec[spec.rindex("["):]
        raise RebirthError(f"{spec}: the subset suffix {suffix} is not [start:stop] or [start:stop:step] with "
                           "whole numbers (e.g. fashion-mnist:test[:300])")
    if m and not _exists(spec):
        base_spec = m.group(1)
        sl = slice(*(int(g) if g else None for g in m.groups()[1:]))
    source = _open_base(base_spec)
    if sl is not None:
        source = Subset(source, range(len(source))[sl], spec)
        if not len(source):
            raise RebirthError(f"{spec}: the subset selects no images")
    if limit is not None:
        if limit < 1:
            raise RebirthError(f"{{opt:limit}} {limit}: must be at least 1")
        if limit < len(source):
            source = Subset(source, range(limit), source.name)
    return source


def _open_base(spec: str) -> Source:
    low = spec.lower()
    if low == "fashion-mnist" or low.startswith("fashion-mnist:"):
        split = low.split(":", 1)[1] if ":" in low else "train"
        return FashionMnist(split)
    path = Path(spec).expanduser()
    if not path.exists():
        raise RebirthError(f"{spec}: no such file or directory (a SOURCE is an image folder, a list file, an LMDB "
                           "or fashion-mnist[:train|:test])")
    if path.is_dir():
        if (path / "data.mdb").exists():
            return LmdbSource(path)
        if (path / "CURRENT").is_file() and any(path.glob("*.ldb")) or any(path.glob("MANIFEST-*")):
            raise RebirthError(f"{spec}: a LevelDB; SOURCE reads LMDBs (convert_imageset -backend lmdb), image "
                               "folders, list files and fashion-mnist")
        return ImageFolder(path)
    if path.name == "data.mdb" or path.suffix == ".mdb":
        return LmdbSource(path)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        raise RebirthError(f"{spec}: a single image; a SOURCE is an image folder, a list file, an LMDB or "
                           "fashion-mnist")
    return ListFile(path)


def net_input_shape(net: "pb.NetParameter", blob: str | None = None) -> tuple[int, ...]:
    """The shape of a deploy net's (first, or named) input, from ``input:`` fields or an Input layer."""
    for i, name in enumerate(net.input):
        if blob is None or name == blob:
            if i < len(net.input_shape):
                return tuple(int(d) for d in net.input_shape[i].dim)
            dims = list(net.input_dim[4 * i:4 * i + 4])
            if len(dims) == 4:
                return tuple(int(d) for d in dims)
    for layer in net.layer:
        if layer.type == "Input":
            for j, top in enumerate(layer.top):
                if blob is None or top == blob:
                    shapes = layer.input_param.shape
                    if shapes:
                        shape = shapes[j] if j < len(shapes) else shapes[0]
                        return tuple(int(d) for d in shape.dim)
    raise RebirthError(f"the net has no input {blob!r} with a shape" if blob else "the net has no input with a shape")
