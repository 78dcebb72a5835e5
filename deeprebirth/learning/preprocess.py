"""Caffe's input preprocessing in numpy (no Caffe needed), and the one answer to "which
preprocessing does this net take": :func:`preprocess_for` reads a train_val's data layer
(``transform_param``), else falls back to the defaults; flags override either.

:class:`Preprocess` turns ``H x W x C`` uint8 images (as every source returns them) into the
float32 ``N x C x H x W`` batches a Caffe net takes, doing what Caffe's ``DataTransformer`` does
(see its docstring).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from deeprebirth.caffe import builtin, folders, netio
from deeprebirth.caffe import proto as pb
from deeprebirth.caffe.phase import filter_phase
from deeprebirth.errors import RebirthError
from deeprebirth.graph.kinds import DATA_TYPES

IMAGENET_MEAN_BGR = (104.0, 117.0, 123.0)
# Caffe's own MNIST examples (LeNet) scale gray pixels by 1/256 = 0.00390625; the default for 1-channel nets.
GRAY_SCALE = 0.00390625



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

    def training_forms(self, h: int, w: int) -> int:
        """How many different inputs training can make of one h x w image: its crop offsets
        (random ones, ``crop`` of the size before cropping) times 2 when mirrored."""
        positions = 1
        if self.crop:
            ph, pw = self._pre_size(h, w)
            positions = max(1, ph - self.crop + 1) * max(1, pw - self.crop + 1)
        return positions * (2 if self.mirror else 1)

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


# ----------------------------------------------------------------------------------------------
# Which preprocessing a net takes



def data_layer(train_val: "pb.NetParameter", phase: int, source: str = "<train_val>") -> "pb.LayerParameter | None":
    """The first data layer (not Input) of ``train_val`` in ``phase``, or None."""
    for layer in filter_phase(train_val, phase).layer:
        if layer.type in DATA_TYPES and layer.type != "Input":
            return layer
    return None


def preprocess_for(input_shape, train_val: str | os.PathLike | None = None, phase: int = pb.TEST,
                   mean: str | None = None, scale: float | None = None) -> Preprocess:
    """The preprocessing for a net input: from ``train_val``'s data layer in ``phase`` when given
    (its transform_param), else :meth:`Preprocess.defaults`; ``mean`` ("104,117,123", one value,
    a .binaryproto file, or "none") and ``scale`` override either."""
    pre = None
    if train_val is not None:
        tv = netio.read_net(train_val)
        layer = data_layer(tv, phase)
        if layer is None:
            which = "TRAIN" if phase == pb.TRAIN else "TEST"
            raise RebirthError(f"{train_val}: has no data layer in the {which} phase to take transform_param from")
        pre = from_layer(layer, input_shape, base_dir=Path(train_val).parent)
    if pre is None:
        pre = Preprocess.defaults(input_shape)
    if mean is not None or scale is not None:
        fields = dict(pre.__dict__)
        if mean is not None:
            fields["mean"] = parse_mean(mean)
            if isinstance(fields["mean"], np.ndarray) and fields["mean"].ndim == 3 and not fields["crop"]:
                fields["resize"] = None
        if scale is not None:
            fields["scale"] = float(scale)
        pre = Preprocess(**fields)
    return pre


def _has_transform(layer: "pb.LayerParameter") -> bool:
    return layer.HasField("transform_param") or layer.HasField("image_data_param") or layer.HasField("data_param")


def from_layer(layer: "pb.LayerParameter | None", input_shape, base_dir: str | os.PathLike | None = None,
               default: bool = False) -> Preprocess | None:
    """A data layer's preprocessing (its transform_param) when it has one; else the defaults
    (``default``) or None. The one place that chooses between the two."""
    if layer is not None and _has_transform(layer):
        return Preprocess.from_transform_param(layer, input_shape, base_dir=base_dir)
    return Preprocess.defaults(input_shape) if default else None


def parse_mean(text: str):
    """--mean: "none", comma-separated values, or a .binaryproto mean file."""
    if text.strip().lower() == "none":
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        pass
    if not Path(text).exists():
        raise RebirthError(f"{{opt:mean}} {text}: expected 'none', comma-separated values or a .binaryproto file")
    return read_mean_file(text)


def default_train_val(spec: str | os.PathLike) -> str | None:
    """The train_val whose TEST data layer gives a directory MODEL's preprocessing: its own
    train_val.prototxt (a slim or tucker output), else that of the slim directory its
    finetune.json or relearn.json names; for a built-in name the train_val shipped with it
    (``builtin.train_val``); None for a prototxt MODEL."""
    p = Path(spec)
    if str(spec) in builtin.NAMES and not p.is_file():
        shipped = builtin.train_val(str(spec))
        return _with_test_data(shipped) if shipped is not None else None
    if not p.is_dir():
        return None
    if (p / "train_val.prototxt").exists():
        return _with_test_data(p / "train_val.prototxt")
    slim_dir = folders.slim_dir_of(p)
    if slim_dir is not None and (slim_dir / "train_val.prototxt").exists():
        return _with_test_data(slim_dir / "train_val.prototxt")
    return None


def _with_test_data(path: Path) -> str | None:
    try:
        return str(path) if data_layer(netio.read_net(path), pb.TEST) is not None else None
    except RebirthError:
        return None
