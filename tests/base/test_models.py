"""The built-in deploy prototxts (models/*.prototxt, written by scripts/gen_models.py).

They must match the public reference nets structurally: the same layers in the same order (name,
type, bottoms, tops), the same net inputs, and the same parameters, where "the same" means
protobuf equality of each whole LayerParameter after clearing only what cannot affect shapes or
the forward computation (see ``NON_COMPUTATIONAL``). They must also be exactly what the generator
produces, so the committed files never drift from it.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format
from helpers import ROOT

from deeprebirth.caffe import proto as pb
from deeprebirth.graph.model import BUILTIN

MODELS_DIR = ROOT / "models"
GENERATOR = ROOT / "scripts" / "gen_models.py"

# built-in name -> public reference, relative to the shared_models fixture
REFERENCES = {
    "googlenet": "bvlc_googlenet/deploy.prototxt",
    "alexnet": "bvlc_alexnet/deploy.prototxt",
    "resnet50": "resnet50/deploy.prototxt",
}

# What is cleared before comparing; everything else in a layer is compared exactly, explicit
# defaults included (e.g. ResNet's "pad: 0 stride: 1" must be spelled out like upstream).
#  * LayerParameter.param: ParamSpec (lr_mult, decay_mult, share names) -- training only.
#  * any FillerParameter inside a *_param sub-message (convolution_param/inner_product_param
#    weight_filler and bias_filler, scale_param filler/bias_filler, ...) -- initialization only.
NON_COMPUTATIONAL = ("LayerParameter.param", "*_param.<FillerParameter fields>")
FILLER_TYPE = "caffe.FillerParameter"


def parse(path: Path):
    return text_format.Parse(path.read_text(encoding="utf-8"), pb.NetParameter())


def ours(name: str):
    return parse(MODELS_DIR / f"{name}.prototxt")


def public(shared_models: Path, name: str):
    return parse(shared_models / REFERENCES[name])


def normalized(layer):
    """A copy of ``layer`` with the NON_COMPUTATIONAL fields cleared."""
    out = pb.LayerParameter()
    out.CopyFrom(layer)
    out.ClearField("param")
    for field, value in out.ListFields():
        if field.name.endswith("_param") and field.message_type is not None:
            for sub, _ in value.ListFields():
                if sub.message_type is not None and sub.message_type.full_name == FILLER_TYPE:
                    value.ClearField(sub.name)
    return out


def signature(net):
    return [(layer.name, layer.type, tuple(layer.bottom), tuple(layer.top)) for layer in net.layer]


def net_inputs(net):
    """Net-level inputs as [(name, dims)], whichever of input_shape / input_dim spells them."""
    if net.input_shape:
        dims = [tuple(s.dim) for s in net.input_shape]
    else:
        flat = list(net.input_dim)
        dims = [tuple(flat[i:i + 4]) for i in range(0, len(flat), 4)]
    assert len(dims) == len(net.input)
    return list(zip(net.input, dims))


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_models", GENERATOR)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_generator(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GENERATOR), *args], cwd=ROOT,
                          capture_output=True, text=True)


# ---------------------------------------------------------------- comparison with public nets

@pytest.mark.parametrize("name", REFERENCES)
def test_same_layer_sequence(shared_models, name):
    assert signature(ours(name)) == signature(public(shared_models, name))


@pytest.mark.parametrize("name", REFERENCES)
def test_same_net_inputs(shared_models, name):
    assert net_inputs(ours(name)) == net_inputs(public(shared_models, name))


@pytest.mark.parametrize("name", REFERENCES)
def test_same_layer_parameters(shared_models, name):
    mine, ref = ours(name), public(shared_models, name)
    assert len(mine.layer) == len(ref.layer)
    diffs = []
    for a, b in zip(mine.layer, ref.layer):
        na, nb = normalized(a), normalized(b)
        if na != nb:
            diffs.append(f"{a.name}:\n  ours:   {text_format.MessageToString(na, as_one_line=True)}"
                         f"\n  public: {text_format.MessageToString(nb, as_one_line=True)}")
    assert not diffs, "\n".join(diffs)


def test_normalization_only_clears_non_computational_fields():
    layer = text_format.Parse(
        'name: "c" type: "Convolution" bottom: "x" top: "c" param { lr_mult: 1 } '
        'convolution_param { num_output: 8 kernel_size: 3 group: 2 bias_term: false '
        'weight_filler { type: "xavier" } bias_filler { type: "constant" } }',
        pb.LayerParameter())
    expected = text_format.Parse(
        'name: "c" type: "Convolution" bottom: "x" top: "c" '
        'convolution_param { num_output: 8 kernel_size: 3 group: 2 bias_term: false }',
        pb.LayerParameter())
    assert normalized(layer) == expected
    changed = pb.LayerParameter()
    changed.CopyFrom(expected)
    changed.convolution_param.group = 1  # explicit default still counts as a difference
    assert normalized(changed) != normalized(layer)


# ---------------------------------------------------------------- self-contained sanity

@pytest.mark.parametrize("name, n_conv, n_fc, n_layers", [
    ("googlenet", 57, 1, 143),   # 3 stem convs + 9 inceptions x 6
    ("alexnet", 5, 3, 24),
    ("resnet50", 53, 1, 228),    # conv1 + 16 blocks x 3 + 4 projections
])
def test_architecture_counts(name, n_conv, n_fc, n_layers):
    net = ours(name)
    types = [layer.type for layer in net.layer]
    assert types.count("Convolution") == n_conv
    assert types.count("InnerProduct") == n_fc
    assert len(net.layer) == n_layers
    assert len({layer.name for layer in net.layer}) == len(net.layer)  # unique layer names
    assert types[-1] == "Softmax" and net.layer[-1].top[:] == ["prob"]


# ---------------------------------------------------------------- generator

def test_files_have_generated_header():
    gen = load_generator()
    for name in gen.MODELS:
        first = (MODELS_DIR / f"{name}.prototxt").read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("#") and "generated by scripts/gen_models.py" in first.lower()


def test_generator_in_process_deterministic():
    gen = load_generator()
    assert set(gen.MODELS) == set(BUILTIN)
    for build in gen.MODELS.values():
        assert gen.render(build()) == gen.render(build())


def test_committed_files_equal_fresh_generation(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        proc = run_generator(str(out))
        assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(f"{n}.prototxt" for n in BUILTIN)
    assert sorted(p.name for p in b.iterdir()) == names  # no temp files left behind
    for fname in names:
        fresh = (a / fname).read_bytes()
        assert fresh == (b / fname).read_bytes(), f"{fname}: generator is not deterministic"
        assert fresh == (MODELS_DIR / fname).read_bytes(), (
            f"models/{fname} is stale: run `.venv/bin/python scripts/gen_models.py models`")


def test_check_mode(tmp_path):
    assert run_generator("--check", str(MODELS_DIR)).returncode == 0
    assert run_generator(str(tmp_path)).returncode == 0
    (tmp_path / "alexnet.prototxt").write_text("name: \"stale\"\n")
    proc = run_generator("--check", str(tmp_path))
    assert proc.returncode == 1 and "alexnet.prototxt" in proc.stderr


# ---------------------------------------------------------------- shapes (deeprebirth.graph.dag)

# Expected output blob shapes at the upstream deploy batch sizes (a self-contained anchor).
FINAL_SHAPES = {
    "googlenet": {"inception_5b/output": (10, 1024, 7, 7), "prob": (10, 1000)},
    "alexnet": {"pool5": (10, 256, 6, 6), "prob": (10, 1000)},
    "resnet50": {"res5c": (1, 2048, 7, 7), "pool5": (1, 2048, 1, 1), "prob": (1, 1000)},
}


@pytest.mark.parametrize("name", REFERENCES)
def test_blob_shapes_match_public(shared_models, name):
    from deeprebirth.graph.dag import Graph

    mine = Graph(ours(name)).shapes
    ref = Graph(public(shared_models, name)).shapes
    assert mine == ref
    assert all(shape is not None for shape in mine.values())
    for blob, shape in FINAL_SHAPES[name].items():
        assert mine[blob] == shape
