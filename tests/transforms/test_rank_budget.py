"""`rebirth tucker --macs F` (transforms/rank_budget.py): one MAC budget shared by the layers, ranks
chosen by weight error per MAC saved; low-rank layers give their MACs first and narrow or
full-rank ones are spared; the budget holds; the CLI writes the ranks it chose."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import error_line
from helpers import run as rebirth
from test_tucker import LOW_RANK, low_rank_model, random_model

from deeprebirth.errors import RebirthError
from deeprebirth.transforms import rank_budget as rb
from deeprebirth.transforms import tucker as tucker_api


def test_svd_errors_are_the_tail_energy():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(12, 8))
    opt = rb.svd_options("x", rb.Geometry("svd", W, 5, 5))
    s2 = np.linalg.svd(W, compute_uv=False) ** 2
    assert [r["r"] for r in opt.ranks] == [1, 2, 3, 4]       # r (12 + 8) < 12 * 8 up to r = 4
    assert opt.errors[1] == pytest.approx(s2[2:].sum() / s2.sum())
    assert list(opt.macs) == [5 * r * 20 for r in (1, 2, 3, 4)] and opt.macs0 == 5 * 96


def test_tucker_error_bounds_the_decomposition():
    """The spectra's estimate is the truncated-HOSVD error, which HOOI (the rule) never exceeds."""
    from deeprebirth.transforms.rules.tucker import reconstruct, relative_error, tucker2
    rng = np.random.default_rng(1)
    W = rng.normal(size=(16, 12, 3, 3))
    opt = rb.tucker_options("x", rb.Geometry("tucker2", W, 64, 64))
    for ranks, err in list(zip(opt.ranks, opt.errors))[::4]:
        core, U, V = tucker2(W, ranks["R3"], ranks["R4"])
        assert relative_error(W, reconstruct(core, U, V)) ** 2 <= err + 1e-9


def _options(name, spectrum, width, hw=10):
    """A layer of ``width`` x ``width`` weights with the given singular values."""
    rng = np.random.default_rng(len(name))
    P = np.linalg.qr(rng.normal(size=(width, width)))[0]
    Q = np.linalg.qr(rng.normal(size=(width, width)))[0]
    s = np.zeros(width)
    s[:len(spectrum)] = spectrum
    return rb.svd_options(name, rb.Geometry("svd", (P * s) @ Q.T, hw, hw))


def test_budget_takes_macs_where_they_cost_least_error():
    low = _options("low_rank", [10, 5, 1e-3, 1e-3], 64)                # nearly rank 2: cheap to cut
    flat = _options("flat", np.ones(64), 64)                            # every direction matters
    narrow = _options("narrow", np.ones(8), 8)                          # few MACs to give anyway
    got = rb.allocate([low, flat, narrow], 0.75)
    assert set(got) == {"low_rank"} and 2 <= got["low_rank"]["r"] <= 4 and got["low_rank"]["predicted_error"] < 1e-3
    total0 = low.macs0 + flat.macs0 + narrow.macs0
    after = sum(o.macs0 for o in (flat, narrow)) + 10 * got["low_rank"]["r"] * 128
    assert after <= 0.75 * total0
    # a tighter budget must cut into the flat layer too, but still not the narrow one first
    tight = rb.allocate([low, flat, narrow], 0.4)
    assert "flat" in tight and tight["low_rank"]["r"] <= 2
    kept = sum(o.macs0 if o.name not in tight else 10 * tight[o.name]["r"] * 2 * (64 if o.name != "narrow" else 8)
               for o in (low, flat, narrow))
    assert kept <= 0.4 * total0


def test_budget_of_one_decomposes_nothing_and_bad_fractions_are_refused():
    low = _options("low_rank", [10, 5], 32)
    assert rb.allocate([low], 1.0) == {}
    for bad in (0, -0.1, 1.5):
        with pytest.raises(RebirthError, match="^macs must be in"):
            rb.allocate([low], bad)


def test_tucker_with_a_budget_spares_layers_and_reports_it():
    m = low_rank_model()
    out = tucker_api.tucker(m, macs=0.6, data_layer="DummyData")
    layers = {d["layer"]: d for d in out.layers}
    assert layers and all(d["rank_source"] == "budget" for d in layers.values())
    # the low-rank layers give their MACs at (almost) no error
    assert max(d["weight_error"] for d in layers.values()) < 0.05
    assert out.report()["tucker"]["ranks"] == "budget" and out.report()["tucker"]["macs_fraction"] == 0.6
    before = sum(d["macs"]["before"] for d in layers.values())
    assert sum(d["macs"]["after"] for d in layers.values()) < before
    with pytest.raises(RebirthError, match="not two of them"):
        tucker_api.tucker(m, ratio=0.5, macs=0.5, data_layer="DummyData")


def test_cli_macs_budget(tmp_path):
    m = random_model(LOW_RANK)
    (tmp_path / "m.prototxt").write_text(LOW_RANK)
    from deeprebirth.caffe import netio
    netio.write_weights(netio.with_weights(m.net, low_rank_model().weights), tmp_path / "m.caffemodel")
    res = rebirth("tucker", tmp_path / "m.prototxt", tmp_path / "m.caffemodel", "--macs", 0.5, "--data-layer", "dummy",
                  "-o", tmp_path / "o", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["tucker"]["ranks"] == "budget" and doc["tucker"]["layers"]
    line = error_line(rebirth("tucker", tmp_path / "m.prototxt", tmp_path / "m.caffemodel", "--macs", 0.5,
                              "--ratio", 0.5, "-o", tmp_path / "o2"))
    assert "not two of them" in line and not (tmp_path / "o2").exists()


# --- --time: MACs plus a fixed cost a layer ----------------------------------------------------

def test_a_decomposition_that_adds_more_layer_cost_than_it_saves_is_no_candidate():
    """A 16 x 16 layer at 10 positions: 2,560 MACs; its SVD at rank 1 costs 320 MACs but two layers.
    Under a MAC budget it is cut; with a layer worth 30,000 MACs no rank of it is predicted faster."""
    low = _options("narrow_low_rank", [10, 1e-3], 16)
    assert rb.allocate([low], 0.5) != {}
    assert rb.allocate([low], 0.5, layer_cost=30_000, option="time_budget") == {}
    own, cand = low.costs(30_000)
    assert own == low.macs0 + 30_000 and list(cand) == list(low.macs + 60_000)


def test_the_time_budget_holds_and_counts_the_added_layers():
    big = [_options(f"wide{i}", [10, 5, 1, 0.5, 0.1], 256, hw=50) for i in range(3)]
    got = rb.allocate(big, 0.5, layer_cost=30_000, option="time_budget")
    own = sum(o.costs(30_000)[0] for o in big)
    after = sum(o.costs(30_000)[0] if o.name not in got else 50 * got[o.name]["r"] * 512 + 2 * 30_000 for o in big)
    assert got and after <= 0.5 * own
    with pytest.raises(RebirthError, match="^time_budget must be in"):
        rb.allocate(big, 1.5, layer_cost=30_000, option="time_budget")


def test_one_sided_tucker_candidates_drop_a_layer_and_their_error_is_exact():
    """R3 = S keeps no input 1x1 (one layer added, not two), and truncating one mode alone loses
    exactly that mode's tail energy."""
    from deeprebirth.transforms.rules.tucker import reconstruct, relative_error, tucker2
    rng = np.random.default_rng(2)
    W = rng.normal(size=(24, 8, 3, 3))
    both = rb.tucker_options("x", rb.Geometry("tucker2", W, 64, 64))
    sided = rb.tucker_options("x", rb.Geometry("tucker2", W, 64, 64), one_sided=True)
    assert all(n == 3 for n in both.layers) and len(sided.ranks) > len(both.ranks)
    i = sided.ranks.index({"R3": 8, "R4": 5})
    assert sided.layers[i] == 2
    core, U, V = tucker2(W, 8, 5)
    assert relative_error(W, reconstruct(core, U, V)) ** 2 == pytest.approx(sided.errors[i], rel=1e-6)


def test_cli_time_budget_reports_it(tmp_path):
    m = random_model(LOW_RANK)
    (tmp_path / "m.prototxt").write_text(LOW_RANK)
    from deeprebirth.caffe import netio
    netio.write_weights(netio.with_weights(m.net, low_rank_model().weights), tmp_path / "m.caffemodel")
    res = rebirth("tucker", tmp_path / "m.prototxt", tmp_path / "m.caffemodel", "--time", 0.6, "--layer-cost", 1000,
                  "--data-layer", "dummy", "-o", tmp_path / "o", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)["tucker"]
    assert doc["ranks"] == "budget" and doc["time_fraction"] == 0.6 and doc["layer_cost_macs"] == 1000
    assert doc["budget_cost"]["after"] <= 0.6 * doc["budget_cost"]["before"]
    layers = doc["layers"]
    before = sum(d["macs"]["before"] + 1000 for d in layers)
    after = sum(d["macs"]["after"] + 1000 * len(d["new_layers"]) for d in layers)
    assert layers and after < before


def test_layers_left_whole_say_why():
    m = low_rank_model()
    slow, (before, after) = rb.budget_ranks(m, 0.5, layer_cost=10**9, option="time_budget")   # never faster
    assert slow and all(isinstance(v, str) and "predicted faster" in v for v in slow.values())
    assert before == after > 0
    with pytest.raises(RebirthError, match="nothing to decompose.*predicted faster"):
        tucker_api.tucker(m, time=0.5, layer_cost=10**9, data_layer="DummyData")


def test_rank_floor_is_a_fraction_of_the_mode_but_never_below_four():
    assert [rb.rank_floor(n, 1 / 8) for n in (2, 4, 16, 40, 64, 256)] == [2, 4, 4, 5, 8, 32]
    assert rb.rank_floor(64, 0) == 0 and rb.rank_floor(64, 0.25) == 16


def test_rank_floor_drops_the_candidates_below_it():
    rng = np.random.default_rng(3)
    W = rng.normal(size=(64, 48, 3, 3))
    plain = rb.tucker_options("x", rb.Geometry("tucker2", W, 64, 64), one_sided=True)
    floored = rb.tucker_options("x", rb.Geometry("tucker2", W, 64, 64), one_sided=True, floor=1 / 8)
    assert min(r["R4"] for r in plain.ranks) == 1 and min(r["R3"] for r in plain.ranks) == 1
    assert min(r["R4"] for r in floored.ranks) == 8 and min(r["R3"] for r in floored.ranks) == 6
    assert all(r in plain.ranks for r in floored.ranks) and len(floored.ranks) < len(plain.ranks)
    svd = rb.svd_options("y", rb.Geometry("svd", rng.normal(size=(40, 24)), 5, 5), floor=1 / 8)
    assert svd.ranks[0] == {"r": 4}                     # max(4, 24 // 8 = 3)


def test_the_floor_stops_a_tight_budget_and_says_why_a_layer_stays_whole():
    """Under a budget only rank 1 could meet, the floor keeps every rank >= 4, so the budget is not
    reached; a layer with no cheaper rank at or above the floor is left whole with that reason."""
    m = low_rank_model()
    plain, (before, after) = rb.budget_ranks(m, 0.05, floor=0)
    floored, (before_f, after_f) = rb.budget_ranks(m, 0.05, floor=1 / 8)
    assert before == before_f and after_f > after
    kept = [v for v in floored.values() if isinstance(v, dict)]
    assert kept and all(min(x for k, x in v.items() if k in ("r", "R3", "R4")) >= 4 for v in kept)
    assert any(isinstance(v, dict) and min(x for k, x in v.items() if k in ("r", "R3", "R4")) < 4
               for v in plain.values())
    whole = rb.budget_ranks(m, 0.05, floor=0.99)[0]
    assert all(isinstance(whole[n], str) and "rank floor" in whole[n] for n in ("c1", "c2"))


def test_cli_rank_floor_needs_a_budget_and_is_reported(tmp_path):
    m = random_model(LOW_RANK)
    (tmp_path / "m.prototxt").write_text(LOW_RANK)
    from deeprebirth.caffe import netio
    netio.write_weights(netio.with_weights(m.net, low_rank_model().weights), tmp_path / "m.caffemodel")
    args = [tmp_path / "m.prototxt", tmp_path / "m.caffemodel", "--data-layer", "dummy"]
    res = rebirth("tucker", *args, "--rank-floor", 0.25, "-o", tmp_path / "a")
    assert res.exit_code == 1 and "--rank-floor counts only with a budget" in error_line(res)
    assert not (tmp_path / "a").exists()
    res = rebirth("tucker", *args, "--macs", 0.05, "-o", tmp_path / "b", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)["tucker"]
    assert doc["rank_floor"] == rb.RANK_FLOOR
    assert all(min(v for k, v in d["ranks"].items()) >= 4 for d in doc["layers"])
    res = rebirth("tucker", *args, "--macs", 0.05, "--rank-floor", 0, "-o", tmp_path / "c")
    assert res.exit_code == 0 and "rank floor" not in res.output
    res = rebirth("tucker", *args, "--macs", 0.05, "-o", tmp_path / "d")
    assert "rank floor 0.125" in res.output and "--rank-floor 0 goes lower" in res.output
