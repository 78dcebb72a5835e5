"""The teacher's remembered outputs (learning/teacher_memo.py) and the time a run fits with them
(solver.memo_misses, fit_iterations): pure, with a stand-in runner (no Caffe)."""
from __future__ import annotations

import numpy as np
import pytest

from deeprebirth.learning import solver as sv
from deeprebirth.learning.teacher_memo import Memo


class Counting:
    """A runner whose outputs depend on each image alone, counting the images it runs."""
    model = "teacher"
    input_shape = (4, 1, 2, 2)

    def __init__(self):
        self.images = 0

    def run(self, x):
        self.images += len(x)
        scores = x.reshape(len(x), -1)[:, :3] * 2.0
        return scores, scores - 1.0

    def logits_after_run(self, n, scores, logp):
        return scores + 0.5


def test_an_image_seen_before_is_answered_bit_for_bit_without_running():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 1, 2, 2)).astype(np.float32)
    runner = Counting()
    memo = Memo(runner)
    first = memo.logits_of(x)
    assert runner.images == 4 and np.array_equal(first, runner.run(x)[0] + 0.5)
    runner.images = 0
    again = memo.logits_of(x[::-1])                 # the same images in another order
    assert runner.images == 0 and np.array_equal(again, first[::-1])
    scores, logp = memo.run(np.concatenate([x[:1], x[:1], -x[:1]]))   # twice in a batch, and one new
    assert runner.images == 1 and np.array_equal(scores[0], scores[1]) and np.array_equal(logp[2], -x[0].ravel()[:3] * 2 - 1)
    assert memo.stats["hits"] == 6 and memo.stats["misses"] == 5 and memo.model == "teacher"


def test_a_full_memo_still_answers_and_keeps_nothing_more():
    x = np.arange(16, dtype=np.float32).reshape(4, 1, 2, 2)
    memo = Memo(Counting(), max_bytes=2 * (3 * 3 * 4 + 16))     # room for two images
    out = memo.logits_of(x)
    assert out.shape == (4, 3) and memo.stats["images_kept"] == 2
    assert not memo.room_for(1, 3) and Memo(Counting()).room_for(1000, 10)


def test_misses_of_a_run_through_the_images_epoch_by_epoch():
    assert sv.memo_misses(500, 1000) == 500                  # half the first epoch: every image new
    assert sv.memo_misses(5000, 1000) == 1000                # five epochs, no augmentation: each once
    # mirrored: the first epoch 1000 new, the second half of them, then a quarter
    assert sv.memo_misses(1000, 1000, 2) == pytest.approx(1000)
    assert sv.memo_misses(2000, 1000, 2) == pytest.approx(1500)
    assert sv.memo_misses(3000, 1000, 2) == pytest.approx(1750)
    assert sv.memo_misses(100_000, 1000, 2) == pytest.approx(2000)


def test_a_remembered_teacher_fits_more_iterations_into_the_same_time():
    plain = sv.fit_iterations(600, 0.3, safety=1.0, validations=0)
    assert plain.iters == 2000
    # the same 0.3 s a step, 0.2 s of it the teacher's (32 images): 1,000 images seen again and again
    cost = sv.TeacherCost(0.2 / 32, 32, 1000, 1)
    fit = sv.fit_iterations(600, 0.1, safety=1.0, validations=0, teacher=cost)
    assert fit.iters == int((600 - 1000 * 0.2 / 32) // 0.1)
    assert fit.expected == pytest.approx(fit.iters * 0.1 + 1000 * 0.2 / 32)
    # too many images to come again within the run: about what the plain fit gives
    huge = sv.fit_iterations(600, 0.1, safety=1.0, validations=0, teacher=sv.TeacherCost(0.2 / 32, 32, 10 ** 7))
    assert abs(huge.iters - 2000) <= 1


def test_the_time_left_follows_the_fitted_curve_not_the_first_iterations_pace():
    import pickle

    from deeprebirth.cli.progress import time_left
    # 1,000 images, 32 a step: the first ~31 steps meet new images (0.2 s of teacher each), later ones none
    cost = sv.TeacherCost(0.2 / 32, 32, 1000, 1)
    fit = sv.fit_iterations(600, 0.1, safety=1.0, validations=0, teacher=cost)
    curve = pickle.loads(pickle.dumps(sv.FitCurve(fit)))       # it crosses from the child process
    assert curve(fit.iters) == pytest.approx(fit.expected)
    assert curve(10) == pytest.approx(10 * 0.3)
    # 10 steps took what the plan said (3 s): at their pace the rest would take 0.3 s a step ...
    naive = time_left(3.0, 0, 10, fit.iters)
    assert naive == pytest.approx(0.3 * (fit.iters - 10))
    # ... but along the curve it is what the plan has left: a third of that, and twice as long
    # when the steps so far took twice what the plan said
    along = time_left(3.0, 0, 10, fit.iters, curve)
    assert along == pytest.approx(fit.expected - 3.0)
    assert along < naive / 2
    assert time_left(6.0, 0, 10, fit.iters, curve) == pytest.approx(2 * along)
    # counted from where the plan came (recover's relearn steps before it)
    assert time_left(3.0, 300, 310, 300 + fit.iters, curve, origin=300) == pytest.approx(along)


def test_the_forms_training_makes_of_an_image():
    from deeprebirth.learning.preprocess import Preprocess
    assert Preprocess(1, 64, 64, crop=64, mirror=True).training_forms(28, 28) == 2    # resized up: mirror only
    assert Preprocess(1, 64, 64, crop=64, mirror=True).training_forms(68, 68) == 50   # 5 x 5 offsets, mirrored
    assert Preprocess(3, 227, 227, crop=227, resize=(256, 256)).training_forms(500, 375) == 30 * 30
    assert Preprocess(3, 32, 32).training_forms(32, 32) == 1


def test_a_refit_counts_the_iterations_done_and_only_the_teachers_misses_still_to_come():
    cost = sv.TeacherCost(0.2 / 32, 32, 1000, 1)
    first = sv.fit_iterations(600, 0.1, safety=1.0, validations=0, teacher=cost)
    # after 100 steps (3,200 images: every image seen) the teacher costs nothing more
    again = sv.fit_iterations(300, 0.1, safety=1.0, validations=0, teacher=cost, done=100)
    assert again.done == 100
    assert again.iters == 100 + int(300 // 0.1)
    assert again.expected == pytest.approx((again.iters - 100) * 0.1)
    # its curve counts from the re-fit: no teacher seconds in it
    assert sv.FitCurve(again)(10) == pytest.approx(1.0)
    assert sv.FitCurve(again)(again.iters - again.done) == pytest.approx(again.expected)
    # after 10 steps the misses of the first epoch's rest are still to come
    early = sv.fit_iterations(300, 0.1, safety=1.0, validations=0, teacher=cost, done=10)
    assert early.iters - 10 == int((300 - (1000 - 320) * 0.2 / 32) // 0.1)
    assert first.done == 0
    # a cap counts the iterations to come
    assert sv.fit_iterations(300, 0.1, safety=1.0, validations=0, cap=50, done=100).iters == 150


def test_a_run_refits_at_its_shares_and_restarts_only_for_a_real_change():
    # fitted to end at 1,000: due at 200 and at the half of what is fitted then, twice at most
    assert not sv.refit_due(199, 0, 1000, 0)
    assert sv.refit_due(200, 0, 1000, 0)
    assert not sv.refit_due(400, 0, 1600, 1)
    assert sv.refit_due(800, 0, 1600, 1)
    assert not sv.refit_due(900, 0, 1000, 2)
    assert not sv.refit_due(1000, 0, 1000, 0)
    # counted from where the run started (a resumed run)
    assert not sv.refit_due(5100, 5000, 6000, 0)
    assert sv.refit_due(5200, 5000, 6000, 0)
    assert not sv.refit_changes(800, 870)
    assert sv.refit_changes(800, 1200)
    assert sv.refit_changes(800, 600)
    # the step without the teacher: 50 steps in 10 s, 4 s of them the teacher's
    assert sv.measured_step(10.0, 4.0, 50) == pytest.approx(0.12)
