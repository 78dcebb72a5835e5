"""A deterministic fuzz test: mutated prototxts and caffemodels through every command.

Sources: small nets of our own (a classic conv/BN/pool/fc net, the DenseNet-style and
MobileNet-SSD-style fork nets in tests/data, a legacy V0 net), the built-in models and the public
reference prototxts in ../shared/models; caffemodels with random weights for the small nets.
Mutations (seeded, so every run makes the same cases): deleted, duplicated and swapped lines;
numbers set to 0, -1, huge, NaN; unknown and wrong layer types; unknown fields; broken bottoms and
tops and cycles; truncated text; truncated, bit-flipped, empty caffemodels, weights of another net,
a prototxt given as weights; bad output paths (a file, a file as parent, a name too long, a
directory holding other files, a user's file with one of our names, a directory where a file would
go, the input's own directory; sometimes with --force); new output folders, some under parents
that do not exist either; input paths far too long or naming a directory; and Ctrl-C (SIGINT) or
SIGTERM sent while a command runs (to it, or to its process group as a terminal's Ctrl-C is), after
which it must exit 130 with one `rebirth: error: interrupted ...` line and leave outputs complete
or as they were.

Every case runs one command -- inspect, slim, fold-bn (sometimes with --verify), tucker, export
--to onnx (sometimes with --verify), bench with --runs 1, or the learning commands eval, relearn,
finetune and recover on a copy of one slim folder of the small net (its deploy, train_val, report
or weights sometimes mutated; the image SOURCE sometimes missing, a file or an empty folder),
trained for 2 iterations on 16 small images -- in its own process
(tests/cli/fuzz_driver.py) and must end in exit 0, or exit 1 with exactly one
`rebirth: error: ...` line on stderr (other stderr lines may only be `rebirth: warning: ...` or
progress, helpers.PROGRESS_LINE):
no traceback, no signal, no hang (a timeout), no partial output (the output directory is
complete, or as it was; a folder that was not there before a failed run is not there after it,
nor any parent it would have made), and its inputs unchanged.

``REBIRTH_FUZZ_CASES`` sets the number of cases (default 200); ``REBIRTH_FUZZ_SEED`` the seed.
The counts per command and outcome class are printed (``pytest -s``) and written to
``fuzz_report.json`` in the test's temporary directory.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from helpers import DATA, PROGRESS_LINE, ROOT

from deeprebirth import outputs
from deeprebirth.caffe import netio
from deeprebirth.caffe import proto as pb
from deeprebirth.caffe.phase import filter_phase
from deeprebirth.graph.dag import Graph

DRIVER = Path(__file__).resolve().parent / "fuzz_driver.py"
N_CASES = int(os.environ.get("REBIRTH_FUZZ_CASES", "200"))
SEED = int(os.environ.get("REBIRTH_FUZZ_SEED", "20180202"))

SMALL = """name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 8 kernel_size: 1 } }
layer { name: "conv3" type: "Convolution" bottom: "pool1" top: "conv3"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "conv2" bottom: "conv3" top: "sum" }
layer { name: "cat" type: "Concat" bottom: "sum" bottom: "conv2" top: "cat" }
layer { name: "drop" type: "Dropout" bottom: "cat" top: "cat" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc" type: "InnerProduct" bottom: "cat" top: "fc" inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
V0 = """name: "v0"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 16 input_dim: 16
layers { layer { name: "pad1" type: "padding" pad: 1 } bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 } bottom: "pad1" top: "conv1" }
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: MAX kernelsize: 2 stride: 2 } bottom: "conv1" top: "pool1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 5 } bottom: "pool1" top: "fc" }
layers { layer { name: "prob" type: "softmax" } bottom: "fc" top: "prob" }
"""
TYPES = ["Convolution", "Pooling", "ReLU", "InnerProduct", "Concat", "Eltwise", "BatchNorm", "Scale",
         "Softmax", "Flatten", "Permute", "PriorBox", "Reshape", "Split", "Slice", "Input", "Data",
         "Deconvolution", "LRN", "Dropout", "ShuffleChannel", "Upsample"]
COMMANDS = {"inspect": 0.30, "slim": 0.24, "fold-bn": 0.20, "bench": 0.06, "tucker": 0.05, "export": 0.05,
            "plan": 0.02, "eval": 0.02, "relearn": 0.02, "finetune": 0.02, "recover": 0.02}
"""How often each command is drawn (bench: a child and a probe; tucker: pycaffe in the process;
the learning commands train in Caffe)."""
TIMEOUT = {"inspect": 60, "slim": 90, "fold-bn": 90, "bench": 120, "tucker": 120, "export": 90, "plan": 240,
           "eval": 120, "relearn": 180, "finetune": 180, "recover": 240}
LEARNING = ("eval", "relearn", "finetune", "recover")
OUTPUTS = {"slim": {"deploy.prototxt", "train_val.prototxt", "solver.prototxt", "report.json"},
           "fold-bn": {"deploy.prototxt", "weights.caffemodel"},
           "tucker": {"deploy.prototxt", "train_val.prototxt", "solver.prototxt", "report.json"},
           "export": {"model.onnx"},
           "relearn": {"weights.caffemodel", "relearn.json"},
           "finetune": {"weights.caffemodel", "deploy.prototxt", "finetune.json"},
           "recover": {"weights.caffemodel", "deploy.prototxt", "finetune.json", "recover.json"}}
"""What a successful run writes (besides the marker and, with weights, slim's and tucker's
init.caffemodel; the learning commands also write snapshots and recover its relearn/ folder, and
may write beside an earlier run's files)."""


def sources(shared: Path | None) -> dict[str, str]:
    out = {"small": SMALL, "v0": V0,
           "densenet": (DATA / "fork_densenet.prototxt").read_text(),
           "ssd": (DATA / "fork_mobilenet_ssd.prototxt").read_text(),
           "alexnet": (ROOT / "models" / "alexnet.prototxt").read_text()}
    if shared is not None:
        for rel in ("bvlc_googlenet/deploy.prototxt", "bvlc_alexnet/train_val.prototxt", "resnet50/deploy.prototxt"):
            if (shared / rel).exists():
                out["shared:" + rel.split("/")[0] + "/" + Path(rel).stem] = (shared / rel).read_text()
    return out


# Nets small enough to run, fold and slim quickly; the big ones are only inspected.
SMALL_NETS = ("small", "densenet", "ssd", "v0")


def caffemodel_bytes(text: str, seed: int = 0) -> bytes:
    from deeprebirth.runtime.pycaffe import random_weights
    net = filter_phase(netio.parse_net_text(text), pb.TEST)
    return netio.with_weights(net, random_weights(Graph(net, strict=False), seed=seed)).SerializeToString()


# ---------------------------------------------------------------------------------------------
# Mutations


NUMBER = re.compile(r"(?<=: )-?\d+(\.\d+)?(e-?\d+)?\b")


def mutate_text(text: str, rng: random.Random) -> tuple[str, str]:
    lines = text.splitlines()
    kind = rng.choice(["delete", "duplicate", "swap", "number", "number", "type_unknown", "type_wrong",
                       "field", "bottom", "cycle", "top_clash", "truncate", "none"])
    if kind == "delete" and len(lines) > 1:
        del lines[rng.randrange(len(lines))]
    elif kind == "duplicate":
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i])
    elif kind == "swap" and len(lines) > 1:
        i, j = rng.sample(range(len(lines)), 2)
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == "number":
        spots = [(i, m) for i, line in enumerate(lines) for m in NUMBER.finditer(line)]
        if spots:
            i, m = rng.choice(spots)
            new = rng.choice(["0", "-1", "99999999999", "2147483648", "65536", "nan", "1e30", "3"])
            lines[i] = lines[i][:m.start()] + new + lines[i][m.end():]
    elif kind in ("type_unknown", "type_wrong"):
        spots = [i for i, line in enumerate(lines) if 'type: "' in line]
        if spots:
            i = rng.choice(spots)
            new = "FuzzNoSuchLayer" if kind == "type_unknown" else rng.choice(TYPES)
            lines[i] = re.sub(r'type: "[^"]*"', f'type: "{new}"', lines[i], count=1)
    elif kind == "field":
        i = rng.randrange(len(lines))
        lines[i] = lines[i].replace("{", "{ fuzz_field: 1", 1) if "{" in lines[i] else lines[i] + " fuzz_field: 1"
    elif kind in ("bottom", "cycle", "top_clash"):
        refs = [(i, m) for i, line in enumerate(lines) for m in re.finditer(r'(bottom|top): "([^"]*)"', line)]
        names = sorted({m.group(2) for _, m in refs})
        if refs:
            i, m = rng.choice([r for r in refs if r[1].group(1) == ("top" if kind == "top_clash" else "bottom")]
                              or refs)
            if kind == "bottom":
                new = rng.choice(["fuzz_missing", *names])
            else:  # a name produced later (a cycle or a use before definition) / a second producer
                later = [mm.group(2) for j, mm in refs if j > i] or names
                new = rng.choice(later)
            lines[i] = lines[i][:m.start(2)] + new + lines[i][m.end(2):]
    elif kind == "truncate":
        cut = rng.randrange(len(text))
        return text[:cut], kind
    return "\n".join(lines) + "\n", kind


def mutate_weights(good: bytes, other: bytes, text: str, rng: random.Random) -> tuple[bytes, str]:
    kind = rng.choice(["good", "good", "good", "good", "truncate", "bitflip", "other", "empty", "text"])
    if kind == "truncate":
        return good[:rng.randrange(1, len(good))], kind
    if kind == "bitflip":
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        return bytes(data), kind
    if kind == "other":
        return other, kind
    if kind == "empty":
        return b"", kind
    if kind == "text":
        return text.encode(), kind
    return good, kind


FOREIGN = ("others", "same_name", "dir_for_file")
"""Output folders holding something rebirth did not write: refused unless --force."""


def output_spot(case_dir: Path, cmd: str, rng: random.Random) -> tuple[Path, str]:
    kind = rng.choice(["new", "new", "new", "new_parents", "new_parents", "rerun", "file", "file_parent",
                       "too_long", "others", "input_dir", "same_name", "dir_for_file"])
    out = case_dir / "out"
    if kind == "new_parents":   # a folder (and two parents) that do not exist yet: a failed run makes none
        out = case_dir / "made" / "by_rebirth" / "out"
    ours = "init.caffemodel" if cmd == "slim" else "weights.caffemodel"
    if kind == "rerun":     # an earlier run's output, with its marker: ours to replace
        out.mkdir()
        (out / "deploy.prototxt").write_text("stale\n")
        (out / "init.caffemodel").write_bytes(b"stale")
        (out / outputs.MARKER).write_text(json.dumps({"files": ["deploy.prototxt", "init.caffemodel"]}))
    elif kind == "file":
        out.write_text("a file\n")
    elif kind == "file_parent":
        (case_dir / "afile").write_text("a file\n")
        out = case_dir / "afile" / "out"
    elif kind == "too_long":
        out = case_dir / ("o" * 300)
    elif kind == "others":
        out.mkdir()
        (out / "mine.txt").write_text("keep me\n")
    elif kind == "same_name":   # the user's own file that merely has one of our names
        out.mkdir()
        (out / ours).write_bytes(b"the user's own weights")
    elif kind == "dir_for_file":  # a directory (holding a file) where we would write a file
        out.mkdir()
        (out / ours).mkdir()
        (out / ours / "keep.txt").write_text("keep me\n")
    elif kind == "input_dir":
        out = case_dir
    return out, kind


def input_spot(d: Path, path: Path | None, rng: random.Random) -> tuple[Path | None, str]:
    """Now and then an input path that cannot be one: far too long, or a directory."""
    if path is None:
        return None, "none"
    kind = rng.choice(["none"] * 14 + ["too_long", "directory"])
    if kind == "too_long":
        return d / ("n" * 300 + path.suffix), kind
    if kind == "directory":
        (d / "adir").mkdir(exist_ok=True)
        (d / "adir" / "x.txt").write_text("x\n")
        return d / "adir", kind
    return path, kind


# ---------------------------------------------------------------------------------------------
# Cases


def learning_inputs(root: Path) -> tuple[Path, Path]:
    """Made once per run: a slim folder of the small net with its weights (``rebirth slim``) and an
    image folder of 16 small labelled PNGs in two classes."""
    base, images = root / "_learning" / "slim", root / "_learning" / "images"
    if base.exists():
        return base, images
    from click.testing import CliRunner
    from PIL import Image

    from deeprebirth.cli import main
    src = root / "_learning"
    src.mkdir()
    (src / "net.prototxt").write_text(SMALL)
    (src / "net.caffemodel").write_bytes(caffemodel_bytes(SMALL))
    made = CliRunner().invoke(main, ["slim", str(src / "net.prototxt"), "-w", str(src / "net.caffemodel"),
                                     "-o", str(base)])
    assert made.exit_code == 0, made.output
    pixels = random.Random(0)
    for i in range(16):
        (images / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        data = bytes(pixels.randrange(256) for _ in range(16 * 16 * 3))
        Image.frombytes("RGB", (16, 16), data).save(images / f"c{i % 2}" / f"{i:02d}.png")
    return base, images


def learning_case(root: Path, d: Path, rng: random.Random) -> tuple[Path, str, str]:
    """The case's own copy of the slim folder (sometimes with a broken file) and its SOURCE (sometimes
    one that cannot be read), with how each was chosen."""
    import shutil
    base, images = learning_inputs(root)
    slim = d / "slim"
    shutil.copytree(base, slim)
    kind = rng.choice(["none", "none", "none", "deploy", "train_val", "report", "weights"])
    if kind in ("deploy", "train_val"):
        f = slim / f"{kind}.prototxt"
        text, how = mutate_text(f.read_text(), rng)
        f.write_text(text)
        kind += ":" + how
    elif kind == "report":
        f = slim / "report.json"
        f.write_text(f.read_text()[:rng.randrange(1, 200)])
    elif kind == "weights":
        (slim / "init.caffemodel").write_bytes(b"")
    source = rng.choice(["good"] * 5 + ["missing", "file", "empty"])
    spec = {"good": str(images), "missing": str(d / "no_such_images"), "file": str(d / "net.prototxt")}
    if source == "empty":
        (d / "no_images").mkdir()
        spec["empty"] = str(d / "no_images")
    return slim, spec[source], f"{kind}/{source}"


def learning_args(cmd: str, slim: Path, source: str, out: Path | None) -> list[str]:
    if cmd == "eval":
        return ["eval", str(slim), "--data", source, "--limit", "8"]
    if cmd == "relearn":
        return ["relearn", str(slim), "--images", source, "--count", "8", "--heldout", "4", "--iters", "2",
                "-o", str(out)]
    if cmd == "finetune":
        return ["finetune", str(slim), "--train", source, "--iters", "2", "-o", str(out)]
    return ["recover", str(slim), "--images", source, "--count", "8", "--relearn-iters", "2", "--iters", "2",
            "-o", str(out)]


def command_args(cmd: str, d: Path, net: Path, w: Path | None, good_weights: bytes | None,
                 rng: random.Random) -> tuple[list[str], Path | None, str]:
    """The command line of one case, its output folder (or None) and how that was chosen."""
    if cmd == "inspect":
        return ["inspect", str(net)] + (["--weights", str(w)] if w else []) + \
            (["--json"] if rng.random() < 0.3 else []), None, "none"
    if cmd == "bench":
        return ["bench", str(net), "--runs", "1", "--warmup", "0", "--json"] + (["-w", str(w)] if w else []), \
            None, "none"
    if cmd == "plan":    # by time alone without weights; with them but no images: refused before any work
        return ["plan", str(net), "--runs", "5", "--json"] + (["-w", str(w)] if w else []), None, "none"
    out, omut = output_spot(d, cmd, rng)
    if cmd in ("fold-bn", "tucker") and w is None:
        w = d / "net.caffemodel"
        w.write_bytes(good_weights)
    if cmd == "slim":
        args = ["slim", str(net), "-o", str(out)] + (["-w", str(w)] if w else [])
        args += rng.choice([[], [], ["--rules", "streamline"], ["--data-layer", "dummy"], ["--keep-pooling"],
                            ["--only", "conv1"], ["--allow-missing"]])
    elif cmd == "fold-bn":
        args = ["fold-bn", str(net), str(w), "-o", str(out)] + (["--verify"] if rng.random() < 0.15 else [])
    elif cmd == "tucker":
        args = ["tucker", str(net), str(w), "-o", str(out), "--data-layer", "dummy"]
        args += rng.choice([[], ["--ratio", "0.5"], ["--ranks", "2,2"], ["--macs", "0.5"], ["--only", "conv1"],
                            ["--ratio", "0"], ["--rank-floor", "0.5"]])
    else:
        args = ["export", str(net), "--to", "onnx", "-o", str(out)] + (["-w", str(w)] if w else [])
        args += ["--verify"] if rng.random() < 0.2 else []
    return args, out, omut


def make_cases(root: Path, n: int, seed: int, shared: Path | None) -> list[dict]:
    rng = random.Random(seed)
    srcs = sources(shared)
    weights = {name: caffemodel_bytes(srcs[name], seed=i) for i, name in enumerate(SMALL_NETS)}
    cases = []
    for i in range(n):
        cmd = rng.choices(list(COMMANDS), weights=list(COMMANDS.values()))[0]
        if cmd in LEARNING:
            cases.append(make_learning_case(root, i, cmd, rng))
            continue
        name = rng.choice(list(srcs)) if cmd == "inspect" else rng.choice(SMALL_NETS)
        # inspect sees mostly broken nets; the writing commands also need enough runs that succeed
        text, tmut = mutate_text(srcs[name], rng) if rng.random() < (0.8 if cmd == "inspect" else 0.55) \
            else (srcs[name], "none")
        d = root / f"case{i:04d}"
        d.mkdir()
        net = d / "net.prototxt"
        net.write_text(text)
        wmut, w = "none", None
        if name in weights and (cmd in ("fold-bn", "tucker") or rng.random() < 0.5):
            other = weights[rng.choice([k for k in weights if k != name])]
            data, wmut = mutate_weights(weights[name], other, text, rng)
            w = d / "net.caffemodel"
            w.write_bytes(data)
        net_arg, nmut = input_spot(d, net, rng)
        w, wpath_mut = input_spot(d, w, rng) if w is not None else (None, "none")
        args, out, omut = command_args(cmd, d, net_arg, w, weights[name] if name in weights else None, rng)
        if out is not None and rng.random() < 0.15:
            args.append("--force")
        case = {"id": f"case{i:04d}", "cmd": cmd, "source": name, "args": args,
                "mutations": {"prototxt": tmut, "weights": wmut, "output": omut, "paths": f"{nmut}/{wpath_mut}"},
                "out": str(out) if out else None, "dir": str(d), "timeout": TIMEOUT[cmd]}
        if rng.random() < 0.06:   # Ctrl-C (or SIGTERM) while it runs
            case["interrupt"] = rng.choice([0.05, 0.3, 0.8, 1.5])
            case["interrupt_signal"] = rng.choice(["SIGINT", "SIGINT", "SIGTERM"])
            case["interrupt_group"] = rng.random() < 0.5    # to the process group, like a terminal's Ctrl-C
            case["mutations"]["signal"] = case["interrupt_signal"] + (" (group)" if case["interrupt_group"] else "")
        cases.append(case)
    return cases


def make_learning_case(root: Path, i: int, cmd: str, rng: random.Random) -> dict:
    d = root / f"case{i:04d}"
    d.mkdir()
    (d / "net.prototxt").write_text(SMALL)      # a file where a SOURCE may be pointed
    slim, source, how = learning_case(root, d, rng)
    slim_arg, smut = input_spot(d, slim, rng)
    out, omut = output_spot(d, cmd, rng) if cmd != "eval" else (None, "none")
    args = learning_args(cmd, slim_arg, source, out)
    if out is not None and cmd in ("relearn", "finetune") and rng.random() < 0.15:
        args.append("--force")
    case = {"id": f"case{i:04d}", "cmd": cmd, "source": "small (slim)", "args": args,
            "mutations": {"slim": how, "output": omut, "paths": smut},
            "out": str(out) if out else None, "dir": str(d), "timeout": TIMEOUT[cmd]}
    if rng.random() < 0.1:   # Ctrl-C (or SIGTERM) while it runs: mostly in the middle of training
        case["interrupt"] = rng.choice([0.3, 1.5, 3.0, 6.0])
        case["interrupt_signal"] = rng.choice(["SIGINT", "SIGINT", "SIGTERM"])
        case["interrupt_group"] = rng.random() < 0.5
        case["mutations"]["signal"] = case["interrupt_signal"] + (" (group)" if case["interrupt_group"] else "")
    return case


def snapshot(path: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file below ``path`` (or of ``path`` itself)."""
    try:
        path.lstat()
    except OSError:  # missing, or a name too long to exist
        return {}
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    if not path.is_dir():
        return {}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:     # a name too long to exist
        return False


def first_missing(path: Path, below: Path) -> Path | None:
    """The outermost of ``path`` and its parents under ``below`` that does not exist: what a run
    writing ``path`` would make (and a failed run must take back)."""
    for p in [*reversed(path.parents), path]:
        if p != below and p.is_relative_to(below) and not _exists(p):
            return p
    return None


def outcome_class(result: dict) -> str:
    if result["exit"] == 0:
        return "ok"
    if result.get("interrupted"):
        return "interrupted"
    line = next((x for x in result["stderr"].splitlines() if x.startswith("rebirth: error:")), "")
    for cls, pattern in (("caffe aborted", r"aborted: |killed by"), ("prototxt parse", r":\d+:\d+: "),
                         ("weights", r"caffemodel|weight|blob"), ("output path", r"cannot write|not a directory|"
                                                                   r"holds|refusing|file name|is a file"),
                         ("cycle/order", r"cycle|later layer"), ("bottom/top", r"bottom|top"),
                         ("layer settings", r"layer '"), ):
        if re.search(pattern, line):
            return cls
    return "other"


def check_case(case: dict, result: dict, before: dict) -> list[str]:
    problems = []
    err, out = result["stderr"], result["stdout"]
    if result["timed_out"]:
        problems.append(f"hung (killed after {case['timeout']} s)")
    if result["signal"] is not None:
        problems.append(f"died of signal {result['signal']}")
    if "Traceback" in err or "Traceback" in out:
        problems.append("traceback: " + err.strip().splitlines()[-1][:200] if err.strip() else "traceback")
    lines = [x for x in err.strip().splitlines() if x]
    errors = [x for x in lines if x.startswith("rebirth: error: ")]
    others = [x for x in lines if not x.startswith(("rebirth: error: ", "rebirth: warning: ", "rebirth: timing "))
              and not PROGRESS_LINE.match(x)]     # progress, and what a long command says it will run
    interrupted = result.get("interrupted")
    if result["exit"] == 0:
        if errors:
            problems.append("exit 0 with an error line")
    elif interrupted and result["exit"] == 130:   # Ctrl-C / SIGTERM: one line too
        if len(errors) != 1 or others or "interrupted" not in errors[0]:
            problems.append(f"interrupted without exactly one error line: {lines[:3]}")
    elif interrupted and result["signal"] is not None and result["exit"] is None:
        problems.append(f"interrupted and died of signal {result['signal']} (no cleanup)")
    elif result["exit"] == 1:
        if len(errors) != 1 or others:
            problems.append(f"exit 1 without exactly one error line: {lines[:3]}")
    elif result["signal"] is None:
        problems.append(f"exit code {result['exit']}: {lines[:2]}")
    # inputs unchanged
    for name, digest in before["inputs"].items():
        now = snapshot(Path(case["dir"]) / name)
        if now != digest:
            problems.append(f"input {name} changed")
    # no partial output
    if case["out"]:
        outp = Path(case["out"])
        leftovers = [p.name for p in outp.parent.glob(f".{outp.name[:100]}.*")] if outp.parent.is_dir() else []
        if leftovers:
            problems.append(f"temporary files left: {leftovers}")
        if result["exit"] != 0 and case["mutations"]["output"] != "input_dir" and snapshot(outp) != before["out"]:
            problems.append("failed but the output changed")
        if result["exit"] == 0 and case["mutations"]["output"] in FOREIGN and "--force" not in case["args"]:
            problems.append("replaced a folder holding files rebirth did not write, without --force")
        made = before.get("missing")
        if result["exit"] != 0 and made and _exists(Path(made)):
            problems.append(f"failed but left the folder it made: {Path(made).relative_to(case['dir'])}")
        if result["exit"] == 0:
            want = OUTPUTS[case["cmd"]]
            got = set(snapshot(outp))
            extra = set() if case["cmd"] in LEARNING else got - want - {"init.caffemodel", outputs.MARKER}
            if not want <= got or extra:
                problems.append(f"output has {sorted(got)}")
            elif outputs.MARKER not in got:
                problems.append("output without its marker")
    return problems


@pytest.mark.slow
def test_fuzz_every_command(tmp_path, request):
    shared = ROOT.parent / "shared" / "models"
    cases = make_cases(tmp_path, N_CASES, SEED, shared if shared.is_dir() else None)
    before = {}
    for case in cases:
        d = Path(case["dir"])
        inputs = {p.name: snapshot(p) for p in d.iterdir() if p.name in ("net.prototxt", "net.caffemodel", "slim")}
        out = Path(case["out"]) if case["out"] else None
        made = first_missing(out, d) if out is not None else None
        before[case["id"]] = {"inputs": inputs, "out": snapshot(out) if out else {},
                              "missing": str(made) if made is not None else None}
    cases_file, results_file = tmp_path / "cases.json", tmp_path / "results.json"
    cases_file.write_text(json.dumps(cases))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", GLOG_minloglevel="2")
    subprocess.run([sys.executable, str(DRIVER), str(cases_file), str(results_file), "2"], check=True, env=env,
                   timeout=60 + 2 * sum(c["timeout"] for c in cases))
    results = {r["id"]: r for r in json.loads(results_file.read_text())}
    assert set(results) == {c["id"] for c in cases}

    failures, table, examples = [], Counter(), {}
    for case in cases:
        result = results[case["id"]]
        cls = outcome_class(result)
        table[(case["cmd"], cls)] += 1
        if cls != "ok":
            examples.setdefault(cls, next((x for x in result["stderr"].splitlines()
                                           if x.startswith("rebirth: error:")), "")[:300])
        for problem in check_case(case, result, before[case["id"]]):
            failures.append(f"{case['id']} {case['cmd']} {case['source']} {case['mutations']}: {problem}\n"
                            f"    args: {' '.join(case['args'])}")
    report = {"cases": len(cases), "seed": SEED,
              "per_command": dict(Counter(c["cmd"] for c in cases)),
              "outcomes": {f"{cmd}: {cls}": n for (cmd, cls), n in sorted(table.items())},
              "seconds": round(sum(r["seconds"] for r in results.values()), 1),
              "failures": len(failures), "examples": examples}
    (tmp_path / "fuzz_report.json").write_text(json.dumps(report, indent=2))
    print("\nfuzz:", json.dumps(report, indent=2))
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures[:15])


def test_mutations_are_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    ca, cb = make_cases(a, 12, 7, None), make_cases(b, 12, 7, None)
    assert [(c["cmd"], c["mutations"]) for c in ca] == [(c["cmd"], c["mutations"]) for c in cb]
    assert [(Path(c["dir"]) / "net.prototxt").read_text() for c in ca] == \
        [(Path(c["dir"]) / "net.prototxt").read_text() for c in cb]


@pytest.mark.slow
def test_forked_cases_match_a_fresh_interpreter(tmp_path):
    """The driver's forked cases behave as `python -m deeprebirth.cli` does (exit code, stderr)."""
    cases = [c for c in make_cases(tmp_path, 16, SEED + 1, None) if c["cmd"] != "bench"][:4]
    for c in cases:  # run each twice: output paths must start out the same
        c["args2"] = [a.replace(c["dir"], c["dir"] + "_copy") for a in c["args"]]
        import shutil
        shutil.copytree(c["dir"], c["dir"] + "_copy", symlinks=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", GLOG_minloglevel="2")
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    subprocess.run([sys.executable, str(DRIVER), str(tmp_path / "cases.json"), str(tmp_path / "r.json"), "1"],
                   check=True, env=env, timeout=600)
    forked = {r["id"]: r for r in json.loads((tmp_path / "r.json").read_text())}
    for c in cases:
        fresh = subprocess.run([sys.executable, "-m", "deeprebirth.cli", *c["args2"]], env=env,
                               capture_output=True, text=True, timeout=300)
        assert fresh.returncode == forked[c["id"]]["exit"], (c["args"], fresh.stderr)
        assert fresh.stderr.replace("_copy", "") == forked[c["id"]]["stderr"], c["args"]
