"""Model I/O: prototxt/caffemodel loading, legacy upgrade, phase filtering, numpy blobs, atomic writes."""
from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from deeprebirth import outputs
from deeprebirth.caffe import netio
from deeprebirth.caffe import proto as pb
from deeprebirth.caffe.phase import filter_phase, phases_used
from deeprebirth.errors import RebirthError

V1_NET = """
name: "legacy"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 8 input_dim: 8
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv"
         blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
         convolution_param { num_output: 4 kernel_size: 3 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "pool" type: POOLING bottom: "conv" top: "pool"
         pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "fc" type: INNER_PRODUCT bottom: "pool" top: "fc" inner_product_param { num_output: 5 } }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
"""

PHASED = """
name: "phased"
layer { name: "train_data" type: "DummyData" top: "data" top: "label" include { phase: TRAIN }
        dummy_data_param { shape { dim: 4 dim: 3 dim: 8 dim: 8 } shape { dim: 4 } } }
layer { name: "test_data" type: "DummyData" top: "data" top: "label" include { phase: TEST }
        dummy_data_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc" exclude { phase: TRAIN } }
layer { name: "staged" type: "Silence" bottom: "fc" include { stage: "extra" } }
"""


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_v1_layers_are_upgraded(tmp_path):
    net = netio.read_net(_write(tmp_path, "v1.prototxt", V1_NET))
    assert len(net.layers) == 0
    assert [layer.type for layer in net.layer] == ["Convolution", "ReLU", "Pooling", "InnerProduct", "Softmax"]
    conv = net.layer[0]
    assert [p.lr_mult for p in conv.param] == [1, 2]
    assert [p.decay_mult for p in conv.param] == [1, 0]
    assert conv.convolution_param.num_output == 4


def test_v1_upgrade_agrees_with_caffe(tmp_path, caffe):
    """Caffe upgrades the V1 file itself; our upgraded net must build the same blobs."""
    path = _write(tmp_path, "v1.prototxt", V1_NET)
    theirs = caffe.Net(str(path), caffe.TEST)
    from deeprebirth.graph.dag import Graph
    from deeprebirth.runtime.pycaffe import CaffeNet
    ours = netio.read_net(path)
    assert Graph(ours).shapes == {k: tuple(v.data.shape) for k, v in theirs.blobs.items()}
    assert CaffeNet(ours).blob_shapes() == Graph(ours).shapes


def test_phase_filtering_follows_netstaterules(tmp_path):
    net = netio.read_net(_write(tmp_path, "phased.prototxt", PHASED))
    train = filter_phase(net, pb.TRAIN)
    test = filter_phase(net, pb.TEST)
    staged = filter_phase(net, pb.TEST, stages=["extra"])
    assert [layer.name for layer in train.layer] == ["train_data", "fc", "loss"]
    assert [layer.name for layer in test.layer] == ["test_data", "fc", "loss", "acc"]
    assert [layer.name for layer in staged.layer][-1] == "staged"
    assert phases_used(net) == {pb.TRAIN, pb.TEST}


def test_phase_filtering_agrees_with_caffe(tmp_path, caffe):
    path = _write(tmp_path, "phased.prototxt", PHASED)
    net = netio.read_net(path)
    for phase, cphase in ((pb.TRAIN, caffe.TRAIN), (pb.TEST, caffe.TEST)):
        theirs = [n for n in caffe.Net(str(path), cphase)._layer_names]
        ours = [layer.name for layer in filter_phase(net, phase).layer]
        assert [n for n in theirs if "split" not in n] == ours


def test_malformed_prototxt_names_line_and_column(tmp_path):
    path = _write(tmp_path, "bad.prototxt", 'name: "x"\nlayer {\n  name: "a"\n  type: "ReLU"\n  bogus_field: 3\n}\n')
    with pytest.raises(RebirthError) as err:
        netio.read_net(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:5:")
    assert "bogus_field" in msg
    assert "\n" not in msg


def test_unbalanced_braces_error(tmp_path):
    path = _write(tmp_path, "bad.prototxt", 'layer {\n  name: "a"\n')
    with pytest.raises(RebirthError, match=r"bad\.prototxt:\d+:\d+"):
        netio.read_net(path)


def test_solver_file_is_not_a_net(shared_models):
    with pytest.raises(RebirthError, match="SolverParameter"):
        netio.read_net(shared_models / "bvlc_googlenet" / "solver.prototxt")


def test_empty_or_binary_file_is_not_a_net(tmp_path):
    with pytest.raises(RebirthError, match="no layers"):
        netio.read_net(_write(tmp_path, "empty.prototxt", 'name: "nothing"\n'))
    binary = tmp_path / "w.caffemodel"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(RebirthError, match="binary") as exc:
        netio.read_net(binary)
    # a library caller is pointed at the parameter (the cli renders it as the command's flag)
    assert "goes to weights)" in str(exc.value) and "--" not in str(exc.value)
    assert "{opt:weights}" in exc.value.template
    with pytest.raises(RebirthError, match="no such file"):
        netio.read_net(tmp_path / "missing.prototxt")


def test_text_file_is_not_a_caffemodel(shared_models):
    with pytest.raises(RebirthError, match="not a binary caffemodel"):
        netio.read_weights(shared_models / "bvlc_alexnet" / "deploy.prototxt")


def test_prototxt_round_trip_is_semantically_identical(shared_models, tmp_path):
    for rel in ("bvlc_googlenet/deploy.prototxt", "bvlc_googlenet/train_val.prototxt",
                "bvlc_alexnet/train_val.prototxt", "resnet50/deploy.prototxt"):
        net = netio.read_net(shared_models / rel)
        out = netio.write_net(net, tmp_path / "rt.prototxt")
        again = netio.read_net(out)
        assert again == net, rel
        assert again.SerializeToString(deterministic=True) == net.SerializeToString(deterministic=True)


def test_blob_numpy_round_trip_and_legacy_shapes():
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(4, 3, 2, 5)).astype(np.float32)
    blob = netio.array_to_blob(arr)
    assert list(blob.shape.dim) == [4, 3, 2, 5]
    assert np.array_equal(netio.blob_to_array(blob), arr)
    legacy = pb.BlobProto(num=1, channels=1, height=6, width=2)
    legacy.double_data.extend(np.arange(12, dtype=np.float64))
    out = netio.blob_to_array(legacy)
    assert out.shape == (1, 1, 6, 2) and out.dtype == np.float32
    assert np.array_equal(out.ravel(), np.arange(12, dtype=np.float32))
    bad = pb.BlobProto()
    bad.shape.dim.extend([3, 3])
    bad.data.extend([1.0, 2.0])
    with pytest.raises(RebirthError, match="holds 2 values"):
        netio.blob_to_array(bad, "layer 'x' blob 0")


def test_unpacked_float_encoding_is_read():
    """A BlobProto whose floats are written one by one (not packed) still loads."""
    import struct
    values = [1.5, -2.0, 3.25]
    payload = b"".join(b"\x2d" + struct.pack("<f", v) for v in values)  # field 5, wire type 5
    shape = pb.BlobShape(dim=[3]).SerializeToString()
    raw = b"\x3a" + bytes([len(shape)]) + shape + payload  # field 7 (shape), then the floats
    blob = pb.BlobProto.FromString(raw)
    assert netio.blob_to_array(blob).tolist() == values


@pytest.mark.slow
def test_caffemodel_round_trip_is_byte_identical(tmp_path, caffe, shared_models):
    """A caffemodel written by Caffe itself reads and writes back to the same bytes."""
    path = shared_models / "bvlc_alexnet" / "deploy.prototxt"
    net = caffe.Net(str(path), caffe.TEST)
    rng = np.random.default_rng(1)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.normal(size=b.data.shape)
    model = tmp_path / "alexnet.caffemodel"
    net.save(str(model))
    loaded = netio.read_weights(model)
    out = netio.write_weights(loaded, tmp_path / "again.caffemodel")
    assert out.read_bytes() == model.read_bytes()
    weights = netio.weights_of(loaded)
    assert np.array_equal(weights["conv1"][0], net.params["conv1"][0].data)
    # numpy -> blobs -> bytes again, through our own writer
    rebuilt = netio.with_weights(netio.strip_weights(loaded), weights)
    assert netio.weights_of(rebuilt)["fc8"][1].tobytes() == net.params["fc8"][1].data.tobytes()


def test_atomic_write_never_overwrites_an_input(tmp_path):
    src = _write(tmp_path, "in.prototxt", "keep me")
    with pytest.raises(RebirthError, match="refusing to overwrite"):
        outputs.atomic_write(src, "clobber", inputs=[src])
    assert src.read_text() == "keep me"
    out = outputs.atomic_write(tmp_path / "sub" / "out.txt", "hello", inputs=[src])
    assert out.read_text() == "hello"
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["out.txt"]  # no temp left
    assert out.stat().st_mode & 0o044 == 0o044  # readable by others, as an ordinary new file


def test_text_format_parse_of_every_input_form(tmp_path):
    forms = {
        "input_shape": 'input: "data" input_shape { dim: 1 dim: 3 dim: 4 dim: 4 }',
        "input_dim": 'input: "data" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4',
        "Input": 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }',
    }
    from deeprebirth.graph.dag import Graph
    for name, head in forms.items():
        text = head + '\nlayer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n'
        net = netio.read_net(_write(tmp_path, f"{name}.prototxt", text))
        assert Graph(net).shapes["r"] == (1, 3, 4, 4), name
        assert text_format.MessageToString(net)


def test_claimed_dir_removes_the_folder_it_made_when_the_work_fails(tmp_path):
    from deeprebirth import outputs as nio
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with nio.claimed_dir(out, ["weights.caffemodel"]):
            assert (out / nio.MARKER).exists()
            raise RuntimeError("refused")
    assert not out.exists()
    with pytest.raises(RuntimeError):          # something written: the folder and its files stay
        with nio.claimed_dir(out, ["weights.caffemodel"]):
            (out / "weights.caffemodel").write_bytes(b"x")
            raise RuntimeError("failed late")
    assert (out / "weights.caffemodel").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(RuntimeError):          # a folder that was there before is left alone
        with nio.claimed_dir(mine, ["weights.caffemodel"]):
            raise RuntimeError("refused")
    assert mine.is_dir()
    with nio.claimed_dir(tmp_path / "ok", ["weights.caffemodel"]) as got:
        (got / "weights.caffemodel").write_bytes(b"x")
    assert (tmp_path / "ok" / "weights.caffemodel").exists()
