"""engine/isolate.py: Caffe work in a child process; a CHECK failure becomes a one-line error."""
from __future__ import annotations

import os
import time

import pytest
from helpers import error_line, run

from deeprebirth.caffe import netio
from deeprebirth.errors import RebirthError
from deeprebirth.runtime import isolate

NET = ('layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }\n'
       'layer { name: "c" type: "Convolution" bottom: "d" top: "c" convolution_param { num_output: 2 kernel_size: 1 } }\n')


# Module-level, so that the spawned child can import them.
def add(a, b=0):
    return a + b


def refuse():
    raise RebirthError("layer 'x': nope")


def abort_quietly():
    os.abort()


def python_bug():
    return {}["missing"]


def sleep_long():
    time.sleep(60)


def count_to(n, progress):
    for _ in range(n):
        progress(1)
    return n


def build_in_caffe(text):
    from deeprebirth.runtime.pycaffe import CaffeNet
    CaffeNet(netio.parse_net_text(text)).forward()
    return "ran"


@pytest.mark.slow
def test_result_and_errors_come_back():
    assert isolate.call(add, 2, b=3) == 5
    with pytest.raises(RebirthError, match="^layer 'x': nope$"):
        isolate.call(refuse)
    with pytest.raises(RebirthError, match="killed by SIGABRT"):
        isolate.call(abort_quietly, what="the job")
    with pytest.raises(RebirthError, match="the job failed: KeyError: 'missing' at test_isolate.py"):
        isolate.call(python_bug, what="the job")


def test_timeout_and_progress():
    with pytest.raises(RebirthError, match="did not finish within 0.5 s"):
        isolate.call(sleep_long, timeout=0.5)
    seen = []
    assert isolate.call(count_to, 3, progress=seen.append) == 3
    assert seen == [1, 1, 1]


def test_glog_reason():
    text = ("WARNING: Logging before InitGoogleLogging() is written to STDERR\n"
            "E20261123 04:59:41.700000 28983 net.cpp:10] something odd\n"
            "F20261123 04:59:41.728600 28983 base_conv_layer.cpp:120] Check failed: num_output_ > 0 (0 vs. 0) \n"
            "*** Check failure stack trace: ***\n")
    assert isolate.caffe_reason(text) == "Check failed: num_output_ > 0 (0 vs. 0) (base_conv_layer.cpp:120)"
    assert isolate.caffe_reason("F1123 04:59:41.7 1 a.cpp:1] Unknown layer type: X (known types: A, B)") == \
        "Unknown layer type: X (a.cpp:1)"
    assert isolate.caffe_reason("no glog here") is None
    parse = ('[libprotobuf ERROR google/protobuf/text_format.cc:337] Error parsing text-format caffe.NetParameter: '
             '3:64: Message type "caffe.LayerParameter" has no field named "x".\n'
             'F1123 04:59:41.7 1 upgrade_proto.cpp:94] Check failed: ReadProtoFromTextFile(param_file, param) '
             'Failed to parse NetParameter file: /tmp/n.prototxt\n')
    assert isolate.caffe_reason(parse).endswith('has no field named "x".')


@pytest.mark.caffe
@pytest.mark.slow
def test_caffe_check_failure_is_caffes_message(caffe):
    assert isolate.call(build_in_caffe, NET) == "ran"
    with pytest.raises(RebirthError, match=r"Caffe aborted: Check failed: num_output_ > 0 \(0 vs. 0\)"):
        isolate.call(build_in_caffe, NET.replace("num_output: 2", "num_output: 0"))


@pytest.mark.caffe
def test_bench_of_a_net_caffe_refuses_is_one_line(caffe, tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET + 'layer { name: "s" type: "ShuffleChannel" bottom: "c" top: "s" }\n')
    line = error_line(run("bench", path, "--runs", "1", "--warmup", "0"))
    assert line.startswith("rebirth: error: Caffe (bench) aborted: ")
    assert "Unknown layer type: ShuffleChannel" in line and "known types" not in line


def temp_file_then_abort():
    import tempfile
    fd, _ = tempfile.mkstemp(prefix="deeprebirth-", suffix=".prototxt")
    os.close(fd)
    os.abort()


@pytest.mark.caffe
def test_an_aborted_child_leaves_no_temporary_file(caffe):
    """The child's temporary files (pycaffe's prototxt copy, the stderr capture) live in a folder
    the parent removes, also when Caffe aborts the child half-way."""
    import tempfile
    before = sorted(os.listdir(tempfile.gettempdir()))
    with pytest.raises(RebirthError, match="SIGABRT"):
        isolate.call(temp_file_then_abort, what="the job")
    with pytest.raises(RebirthError, match="Check failed"):
        isolate.call(build_in_caffe, NET.replace("num_output: 2", "num_output: 0"))
    assert sorted(os.listdir(tempfile.gettempdir())) == before


def terminate_self():
    import signal
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)


def sigint_disposition():
    import signal
    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_a_stopped_child_is_an_interruption_not_a_failure():
    assert isolate._interrupted(None, -15) and isolate._interrupted(None, -2)
    assert isolate._interrupted(("crash", "KeyboardInterrupt:  at x.py:3"), 1)
    assert not isolate._interrupted(None, -6) and not isolate._interrupted(("crash", "KeyError: 'x'"), 1)
    assert not isolate._interrupted(None, None)


@pytest.mark.slow
def test_ctrl_c_is_the_parent_s_and_a_child_killed_from_outside_is_an_interruption():
    """Ctrl-C reaches the whole process group: the child ignores it (the parent kills the child),
    so it prints no traceback of its own; a child ended by SIGTERM from outside makes the command
    end as interrupted (the cli's exit 130), not as a Caffe failure."""
    assert isolate.call(sigint_disposition) is True
    with pytest.raises(KeyboardInterrupt):
        isolate.call(terminate_self)


def test_a_signal_during_the_start_waits_until_the_child_is_known():
    """SIGTERM (the cli raises KeyboardInterrupt for it) arriving while the child starts is raised
    once the start is complete, so the child is known and killed, never left running; the child
    starts with SIGINT blocked (the mask it inherits)."""
    import signal

    def like_the_cli(signum, frame):
        raise KeyboardInterrupt

    seen = []

    class Starting:
        def start(self):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)                    # the handler would run here, in the middle
            seen.append(signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))

    previous = signal.signal(signal.SIGTERM, like_the_cli)
    try:
        with pytest.raises(KeyboardInterrupt):
            isolate._start_deaf_to_ctrl_c(Starting())
        assert signal.getsignal(signal.SIGTERM) is like_the_cli
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [True]
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])   # unblocked again


def test_a_ctrl_c_during_the_start_is_not_lost():
    """SIGINT arriving while the child starts (Ctrl-C to the process group) is raised once the start
    is complete: before, it was ignored in that window and the command ran on."""
    import signal

    class Starting:
        def start(self):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)   # as in a terminal
    try:
        with pytest.raises(KeyboardInterrupt):
            isolate._start_deaf_to_ctrl_c(Starting())
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
