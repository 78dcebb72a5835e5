"""Image sources and Caffe's input preprocessing, in numpy (no Caffe needed).

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
Pillow's. :class:`Preprocess` turns them into the float32 ``N x C x H x W`` batches a Caffe net
takes, doing what Caffe's ``DataTransformer`` does (see its docstring).
"""
from __future__ import annotations

import gzip
import io as _pyio
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from deeprebirth.caffe import netio
from deeprebirth.caffe import proto as pb
from deeprebirth.errors import RebirthError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm", ".pbm", ".pnm", ".jfif"}
FASHION_MNIST_DIR = Path(os.environ.get("DEEPREBIRTH_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
IMAGENET_MEAN_BGR = (104.0, 117.0, 123.0)
# Caffe's own MNIST examples (LeNet) scale gray pixels by 1/256 = 0.00390625; the default for 1-channel nets.
GRAY_SCALE = 0.00390625


# ============================================================================================
# Preprocessing


def _pil():
    from PIL import Image  # noqa: PLC0415
    return Image


def _hwc(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3):
        raise RebirthError(f"an image of shape {list(img.shape)}: expected H x W x C with C = 1 or 3")
    return img


def _to_gray(img: np.ndarray) -> np.ndarray:
    """RGB -> gray as Pillow's convert('L') does (ITU-R 601-2 luma), H x W x 1."""
    if img.dtype == np.uint8:
        return np.asarray(_pil().fromarray(img, "RGB").convert("L"))[:, :, None]
    luma = img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114
    return luma.astype(np.float32)[:, :, None]


def _resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize with Pillow (uint8 images as such, others per channel in float mode)."""
    if img.shape[:2] == (height, width):
        return img
    Image = _pil()
    if img.dtype == np.uint8:
        mode = "L" if img.shape[2] == 1 else "RGB"
        src = img[:, :, 0] if mode == "L" else img
        out = np.asarray(Image.fromarray(src, mode).resize((width, height), Image.BILINEAR))
        return out[:, :, None] if mode == "L" else out
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(img[:, :, c], dtype=np.float32), "F")
                        .resize((width, height), Image.BILINEAR)) for c in range(img.shape[2])]
    return np.stack(chans, axis=2)


def _input_chw(input_shape) -> tuple[int, int, int]:
    dims = [int(d) for d in input_shape]
    if len(dims) == 4:
        dims = dims[1:]
    if len(dims) != 3 or min(dims) < 1:
        raise RebirthError(f"net input shape {list(input_shape)}: expected N x C x H x W")
    return dims[0], dims[1], dims[2]


@dataclass
class Preprocess:
    """Caffe's ``DataTransformer``, in numpy, for H x W x C uint8 images (RGB or gray).

    Per image, in this order:

    1. channels: a gray image going to a 3-channel net is repeated over 3 channels; a colour
       image going to a 1-channel net becomes gray with Pillow's ``convert('L')``;
    2. size before cropping: ``resize`` (ImageData's ``new_height``/``new_width``) when set, else
       the mean image's H x W when the mean is an image, else the image's own size when
       ``crop`` is set (images smaller than the crop are resized to ``crop x crop``), else the
       net's H x W. Resizing is Pillow's bilinear (Caffe uses OpenCV's bilinear ``cv::resize``);
    3. colour order: RGB -> BGR when ``bgr`` (Caffe's convention; ``mean`` is in the net's order);
    4. crop to ``crop x crop``: at a uniformly random offset when ``train``, else centred
       (offset ``(H - crop) // 2``, as Caffe); a mean image is cropped at the same offset;
    5. ``(pixel - mean) * scale`` (Caffe subtracts first, then scales);
    6. mirror (flip left-right) with probability 1/2 when ``mirror`` and ``train``. (Caffe flips
       in any phase when ``mirror`` is set; data layers set it for TRAIN only, and evaluation
       here is deterministic.)
    """

    channels: int
    height: int
    width: int
    mean: tuple[float, ...] | np.ndarray | None = None
    scale: float = 1.0
    crop: int = 0
    mirror: bool = False
    bgr: bool = True
    resize: tuple[int, int] | None = None

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise RebirthError(f"the net input has {self.channels} channels; images give 1 (gray) or 3 (colour)")
        if self.resize is not None:
            self.resize = (int(self.resize[0]), int(self.resize[1]))
        out = self.out_size
        if out != (self.height, self.width):
            what = f"crop_size {self.crop}" if self.crop else f"new_height/new_width {self.resize}"
            raise RebirthError(f"{what} gives {out[0]}x{out[1]} images but the net input is "
                               f"{self.height}x{self.width}")
        if self.crop and self.resize and (self.resize[0] < self.crop or self.resize[1] < self.crop):
            raise RebirthError(f"crop_size {self.crop} is larger than the resized image {self.resize}")
        if self.mean is not None:
            mean = np.asarray(self.mean, dtype=np.float32)
            if mean.ndim == 4 and mean.shape[0] == 1:
                mean = mean[0]
            if mean.ndim == 0:
                mean = mean.reshape(1)
            if mean.ndim == 1:
                if mean.size == 1:
                    mean = np.repeat(mean, self.channels)
                if mean.size != self.channels:
                    raise RebirthError(f"{mean.size} mean values for a {self.channels}-channel net input "
                                       "(give one value, or one per channel)")
            elif mean.ndim == 3:
                if mean.shape[0] != self.channels:
                    raise RebirthError(f"the mean image is {'x'.join(map(str, mean.shape))} but the net "
                                       f"input has {self.channels} channels")
                hm, wm = mean.shape[1:]
                if self.resize and (hm, wm) != self.resize:
                    raise RebirthError(f"the mean image is {hm}x{wm} but images are resized to "
                                       f"{self.resize[0]}x{self.resize[1]}")
                if self.crop and (hm < self.crop or wm < self.crop):
                    raise RebirthError(f"the mean image is {hm}x{wm}, smaller than crop_size {self.crop}")
                if not self.crop and (hm, wm) != (self.height, self.width):
                    raise RebirthError(f"the mean image is {hm}x{wm} but the net input is "
                                       f"{self.height}x{self.width}")
            else:
                raise RebirthError(f"mean of shape {list(mean.shape)}: expected per-channel values or a "
                                   "C x H x W image")
            self.mean = mean

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_transform_param(cls, layer: "pb.LayerParameter", input_shape=None,
                             base_dir: str | os.PathLike | None = None) -> "Preprocess":
        """The preprocessing of a train_val data layer: its ``transform_param`` (scale, mirror,
        crop_size, mean_file or mean_value; the deprecated copies in data_param/image_data_param
        when transform_param leaves them unset), ImageData's ``new_height``/``new_width`` and
        ``is_color``. ``input_shape`` is the net input (N x C x H x W); without it, C comes from
        ``is_color``/``force_gray`` and H x W from the crop or the resize. A relative mean_file is
        looked up beside ``base_dir`` (the prototxt's folder), then in the working directory."""
        tp = layer.transform_param
        legacy = None
        for field in ("image_data_param", "data_param"):
            if layer.HasField(field):
                legacy = getattr(layer, field)
        has = lambda f: tp.HasField(f)  # noqa: E731
        scale = tp.scale if has("scale") or legacy is None or not legacy.HasField("scale") else legacy.scale
        crop = tp.crop_size if has("crop_size") or legacy is None else legacy.crop_size
        mirror = tp.mirror if has("mirror") or legacy is None else legacy.mirror
        mean_file = tp.mean_file if has("mean_file") or legacy is None else legacy.mean_file
        resize = None
        gray = tp.force_gray
        if layer.HasField("image_data_param"):
            ip = layer.image_data_param
            if ip.new_height or ip.new_width:
                if not (ip.new_height and ip.new_width):
                    raise RebirthError(f"layer '{layer.name}': new_height and new_width must be set together")
                resize = (ip.new_height, ip.new_width)
            gray = gray or not ip.is_color
        if mean_file and len(tp.mean_value):
            raise RebirthError(f"layer '{layer.name}': transform_param sets both mean_file and mean_value")
        mean = None
        if mean_file:
            mean = read_mean_file(mean_file, base_dir)
        elif len(tp.mean_value):
            mean = tuple(float(v) for v in tp.mean_value)
        if input_shape is not None:
            c, h, w = _input_chw(input_shape)
        else:
            c = 1 if gray else 3
            if crop:
                h = w = crop
            elif resize:
                h, w = resize
            elif isinstance(mean, np.ndarray):
                h, w = mean.shape[-2:]
            else:
                raise RebirthError(f"layer '{layer.name}': no crop_size or new_height/new_width, so the "
                                   "input size must come from the net")
        try:
            return cls(channels=c, height=h, width=w, mean=mean, scale=float(scale), crop=int(crop),
                       mirror=bool(mirror), resize=resize)
        except RebirthError as exc:
            raise RebirthError(f"layer '{layer.name}': {exc}") from None

    @classmethod
    def defaults(cls, input_shape) -> "Preprocess":
        """The usual preprocessing when no train_val says otherwise.

        3 channels: BGR, ImageNet mean (104, 117, 123), scale 1; a square input of 128-256 pixels
        is a centre crop of the image resized to 256 x 256 (the BVLC reference models' recipe),
        any other input size is a plain resize. 1 channel: no mean, scale 1/256 = 0.00390625 (Caffe's
        LeNet/MNIST examples), a plain resize."""
        c, h, w = _input_chw(input_shape)
        if c == 3:
            if h == w and 128 <= h <= 256:
                return cls(3, h, w, mean=IMAGENET_MEAN_BGR, crop=h, resize=(256, 256))
            return cls(3, h, w, mean=IMAGENET_MEAN_BGR)
        return cls(c, h, w, scale=GRAY_SCALE)

    # -- applying ------------------------------------------------------------------------------
    @property
    def out_size(self) -> tuple[int, int]:
        if self.crop:
            return (self.crop, self.crop)
        if self.resize:
            return self.resize
        return (self.height, self.width)

    def _pre_size(self, h: int, w: int) -> tuple[int, int]:
        if self.resize:
            return self.resize
        if isinstance(self.mean, np.ndarray) and self.mean.ndim == 3:
            return tuple(self.mean.shape[1:])
        if self.crop:
            return (h, w) if h >= self.crop and w >= self.crop else (self.crop, self.crop)
        return (self.height, self.width)

    def _one(self, img: np.ndarray, train: bool, rng: np.random.Generator) -> np.ndarray:
        img = _hwc(img)
        if self.channels == 3 and img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        elif self.channels == 1 and img.shape[2] == 3:
            img = _to_gray(img)
        img = _resize(img, *self._pre_size(*img.shape[:2]))
        x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)
        if self.bgr and self.channels == 3:
            x = x[::-1]
        h, w = x.shape[1:]
        oh, ow = self.out_size
        if self.crop:
            if train:
                y0, x0 = int(rng.integers(0, h - oh + 1)), int(rng.integers(0, w - ow + 1))
            else:
                y0, x0 = (h - oh) // 2, (w - ow) // 2
            x = x[:, y0:y0 + oh, x0:x0 + ow]
        else:
            y0 = x0 = 0
        if self.mean is not None:
            if self.mean.ndim == 3:
                x = x - self.mean[:, y0:y0 + oh, x0:x0 + ow]
            else:
                x = x - self.mean[:, None, None]
        if self.scale != 1.0:
            x = x * np.float32(self.scale)
        if self.mirror and train and rng.integers(2):
            x = x[:, :, ::-1]
        return x

    def apply(self, images: Sequence[np.ndarray] | np.ndarray, train: bool = False,
              rng: np.random.Generator | None = None) -> np.ndarray:
        """A list of H x W x C (or H x W) images, uint8 RGB or gray -> float32 N x C x H x W.
        An array is read as one image when it is H x W, or H x W x C with C = 1 or 3; as N
        gray images when it is N x H x W with W not 1 or 3; as N images when it is N x H x W x C."""
        if isinstance(images, np.ndarray) and (images.ndim == 2 or (images.ndim == 3 and images.shape[2] in (1, 3))):
            images = [images]
        rng = rng if rng is not None else np.random.default_rng()
        out = np.empty((len(images), self.channels, *self.out_size), dtype=np.float32)
        for i, img in enumerate(images):
            out[i] = self._one(img, train, rng)
        return out

    def describe(self) -> dict:
        mean = None if self.mean is None else (
            f"image {'x'.join(map(str, self.mean.shape))}" if self.mean.ndim == 3 else [float(v) for v in self.mean])
        return {"channels": self.channels, "height": self.height, "width": self.width, "mean": mean,
                "scale": self.scale, "crop": self.crop, "mirror": self.mirror, "bgr": self.bgr,
                "resize": list(self.resize) if self.resize else None}


def read_mean_file(path: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> np.ndarray:
    """A Caffe mean file (binaryproto BlobProto, as compute_image_mean writes) -> C x H x W float32."""
    p = Path(path)
    if not p.is_absolute() and base_dir is not None and (Path(base_dir) / p).exists():
        p = Path(base_dir) / p
    data = netio._read_bytes(p)
    blob = pb.BlobProto()
    try:
        blob.ParseFromString(data)
    except Exception:  # noqa: BLE001 -- protobuf's DecodeError
        raise RebirthError(f"{p}: not a binaryproto mean file") from None
    arr = netio.blob_to_array(blob, str(p))
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or arr.size == 0:
        raise RebirthError(f"{p}: the mean is {list(arr.shape)}, expected 1 x C x H x W")
    return arr


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


_SLICE = re.compile(r"^(.*)\[(-?\d*):(-?\d*)(?::(-?\d*))?\]$")


def open_source(spec: str, *, limit: int | None = None) -> Source:
    """Open a SOURCE: an image folder, a list file, an LMDB, or ``fashion-mnist[:train|:test]``,
    optionally with a ``[start:stop:step]`` subset suffix; ``limit`` keeps the first N images."""
    spec = str(spec)
    base_spec, sl = spec, None
    m = _SLICE.match(spec)
    if m and not Path(spec).exists():
        base_spec = m.group(1)
        sl = slice(*(int(g) if g else None for g in m.groups()[1:]))
    source = _open_base(base_spec)
    if sl is not None:
        source = Subset(source, range(len(source))[sl], spec)
        if not len(source):
            raise RebirthError(f"{spec}: the subset selects no images")
    if limit is not None:
        if limit < 1:
            raise RebirthError(f"--limit {limit}: must be at least 1")
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
        raise RebirthError(f"{spec}: a single image; a SOURCE is an image folder, a list file, an LMDB or fashion-mnist")
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
