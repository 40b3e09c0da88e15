"""Data-parallel training steps (digitlab.nn.shards): the same gradient as one pass, replicas that share the
parameters, refusals for layers that cannot be split, and the recipe setting wired through fit()."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from digitlab.errors import ConfigError
from digitlab.nn import BatchNorm, Conv2D, Dropout, Flatten, Linear, MaxPool2D, ReLU, Sequential, get_loss
from digitlab.nn.shards import Shards
from digitlab.recipes import load_recipe
from digitlab.train import train_recipe

from conftest import SAMPLE_CNN


def _cnn(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    layers = [Conv2D(4, 3, dtype=dtype), MaxPool2D(2, dtype=dtype), ReLU(dtype=dtype), Flatten(dtype=dtype),
              Linear(out_features=5, dtype=dtype)]
    return Sequential(layers, input_shape=(9, 9), rng=rng)


def _batch(n, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 9, 9)), rng.integers(0, 5, n)


def _one_pass(net, x, y, loss_fn, scale=1.0):
    scores = net.forward(x)
    correct = int((scores.argmax(axis=1) == y).sum())
    loss, d = loss_fn(scores, y)
    net.backward(d * scale)
    return loss, correct, [g.copy() for g in net.grads()]


@pytest.mark.parametrize("n_shards, batch", [(2, 16), (3, 7), (2, 1), (4, 3)])
@pytest.mark.parametrize("loss_name, smoothing", [("softmax_ce", 0.0), ("softmax_ce", 0.1), ("softmax_mse", 0.0)])
def test_a_sharded_step_gives_the_gradient_loss_and_count_of_one_pass(n_shards, batch, loss_name, smoothing):
    loss_fn = get_loss(loss_name, smoothing)
    x, y = _batch(batch)
    loss, correct, grads = _one_pass(_cnn(), x, y, loss_fn, scale=0.5)
    net = _cnn()
    with Shards(net, n_shards) as shards:
        for _ in range(2):  # a second step overwrites the first one's gradients (nothing accumulates)
            got_loss, got_correct = shards.step(x, y, loss_fn, scale=0.5)
    assert got_loss == pytest.approx(loss, rel=1e-12)
    assert got_correct == correct
    for got, want in zip(net.grads(), grads):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)


def test_replicas_share_parameters_and_own_gradients_and_workspace():
    net = _cnn()
    replica = net.replica()
    for p, q in zip(net.parameters(), replica.parameters()):
        assert p is q                                   # one set of weights: the optimizer updates both
    for g, h in zip(net.grads(), replica.grads()):
        assert g is not h and not np.shares_memory(g, h)
    assert all(a.ws is not b.ws for a, b in zip(net.layers, replica.layers))
    x, _ = _batch(4)
    out = net.forward(x)
    out_replica = replica.forward(x)
    assert not np.shares_memory(out, out_replica)       # own workspace: one shard never overwrites another's
    np.testing.assert_array_equal(out, out_replica)
    assert all(isinstance(layer.ws, dict) for layer in replica.layers)
    assert replica.forward(x) is out_replica            # its buffers are kept and reused step after step


def test_the_shards_run_in_parallel_threads():
    """The first part runs in the caller's thread, every other part in one of the shard threads."""
    seen = {}
    net = _cnn()
    forward = Sequential.forward

    def spy(self, x, train=True):
        seen[id(self)] = threading.current_thread().name
        return forward(self, x, train)

    with Shards(net, 3) as shards:
        for replica in shards.nets:
            replica.forward = spy.__get__(replica)
        shards.step(*_batch(9), get_loss("softmax_ce"))
        names = [seen[id(replica)] for replica in shards.nets]
    assert names[0] == threading.current_thread().name
    assert all(name.startswith("digitlab-shard") for name in names[1:])


@pytest.mark.parametrize("layer, word", [(BatchNorm(), "BatchNorm"), (Dropout(0.2), "Dropout")])
def test_layers_that_mix_a_batch_or_draw_random_numbers_are_refused(layer, word):
    net = Sequential([Flatten(), Linear(out_features=8), layer, ReLU(), Linear(out_features=3)], input_shape=(4, 4),
                     rng=np.random.default_rng(0))
    with pytest.raises(ConfigError, match=f"layer 2 \\({word}"):
        Shards(net, 2)
    assert len(Shards(net, 1)) == 1                     # one shard is the plain step: fine
    with pytest.raises(ConfigError, match="shards must be >= 1"):
        Shards(net, 0)


def test_recipes_check_shards_before_any_run_folder_is_written(tmp_path):
    with pytest.raises(ConfigError, match="shards must be 1..64"):
        load_recipe("cnn-fast", {"shards": 0})
    with pytest.raises(ConfigError, match="recipe 'mlp'.*Dropout"):
        train_recipe("mlp", {"dataset": "mnist-sample", "dropout": 0.2, "shards": 2, "epochs": 1},
                     out_dir=tmp_path / "run", quiet=True, report=False)
    assert not (tmp_path / "run" / "config.json").exists()


SHARDED = {**SAMPLE_CNN, "epochs": 1, "steps": 40, "shards": 2}


def test_fit_splits_batches_as_the_recipe_says_on_one_blas_thread(tmp_path):
    seen = {}

    def look(state, model):
        if state.step == 1:
            seen["threads"] = {t.name for t in threading.enumerate()}
            seen["blas"] = {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}

    train_recipe("cnn", SHARDED, out_dir=tmp_path / "run", quiet=True, report=False, callback=look)
    assert any(name.startswith("digitlab-shard") for name in seen["threads"])
    assert seen["blas"] == {1}
    assert not any(t.name.startswith("digitlab-shard") for t in threading.enumerate())   # closed after the run


def test_sharded_training_learns_is_deterministic_and_close_to_one_pass(tmp_path):
    a = train_recipe("cnn", SHARDED, out_dir=tmp_path / "a", quiet=True, report=False)
    b = train_recipe("cnn", SHARDED, out_dir=tmp_path / "b", quiet=True, report=False)
    one = train_recipe("cnn", {**SHARDED, "shards": 1}, out_dir=tmp_path / "one", quiet=True, report=False)
    for k, v in a.model.net.state_dict().items():
        np.testing.assert_array_equal(v, b.model.net.state_dict()[k], err_msg=k)   # thread timing plays no part
        np.testing.assert_allclose(v, one.model.net.state_dict()[k], atol=2e-3, err_msg=k)   # rounding only
    assert a.test_accuracy > 0.8
    assert abs(a.test_accuracy - one.test_accuracy) < 0.02


def test_a_sharded_run_resumes_bit_identically(tmp_path):
    straight = train_recipe("cnn", {**SHARDED, "steps": 0, "epochs": 2, "order": "shuffle"},
                            out_dir=tmp_path / "a", quiet=True, report=False)

    def stop(state, model):
        if state.step == 170:  # mid second epoch (157 steps of 64 per epoch)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_recipe("cnn", {**SHARDED, "steps": 0, "epochs": 2, "order": "shuffle"}, out_dir=tmp_path / "b",
                     quiet=True, report=False, callback=stop)
    resumed = train_recipe(None, out_dir=tmp_path / "b", quiet=True, resume=True, report=False)
    for k, v in straight.model.net.state_dict().items():
        np.testing.assert_array_equal(v, resumed.model.net.state_dict()[k], err_msg=k)


# -- inference: chunks scored side by side ---------------------------------------------------------------------
def test_inference_chunks_run_in_threads_and_give_the_same_scores(sample_cnn):
    from digitlab.data.dataset import load_dataset

    model = sample_cnn.model
    images = load_dataset("mnist-sample", quiet=True).test.images[:300]
    model.inference_threads = 1
    one = model.scores(images, batch_size=64)
    seen = set()
    forward = model.net.forward

    def spy(x, train=True):
        seen.add(threading.current_thread().name)
        return forward(x, train)

    model.net.forward = spy
    try:
        model.inference_threads = 2
        two = model.scores(images, batch_size=64)
        model.inference_threads = 3
        np.testing.assert_array_equal(model.scores(images, batch_size=64), two)   # same chunks, same order
    finally:
        del model.net.forward
        model.inference_threads = 0
    # chunk threads run BLAS on one thread, which may round its products differently from BLAS's own threads
    np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-5)
    assert len({name for name in seen if name.startswith("digitlab-infer")}) >= 2
    assert one.shape == (300, 10)
    np.testing.assert_array_equal(one[:64], model.scores(images[:64]))    # a chunk alone gives the same rows


def test_an_error_in_a_part_is_raised_as_itself_after_every_thread_is_done():
    """A part that fails (labels out of range) raises its own error, from the caller's part and from a shard
    thread alike, and only once no thread still writes gradients."""
    x, y = _batch(6)
    bad_first, bad_last = y.copy(), y.copy()
    bad_first[0], bad_last[-1] = 7, 7             # 5 classes: label 7 is out of range
    for n in (1, 2, 3):
        with Shards(_cnn(), n) as shards:
            for bad in (bad_first, bad_last):
                with pytest.raises(ValueError, match="label"):
                    shards.step(x, bad, get_loss("softmax_ce"))


def test_sparse_inputs_leave_no_stale_gradient_rows_from_another_shard():
    """Linear multiplies the columns that are non-zero in its part only and clears just the rows its last
    backward wrote; rows that another shard's gradient added to the sum must be cleared in the next step too."""
    def net():
        return Sequential([Flatten(dtype=np.float64), Linear(out_features=3, dtype=np.float64)], input_shape=(8,),
                          rng=np.random.default_rng(0))

    loss_fn = get_loss("softmax_ce")
    first, then = np.zeros((4, 8)), np.zeros((4, 8))
    first[:2, :2], first[2:, 4:6] = 1.0, 2.0      # part 1 uses columns 0-1, part 2 columns 4-5
    then[:, :2] = 1.0                             # both parts use columns 0-1 only
    y = np.array([0, 1, 2, 0])
    sharded = net()
    with Shards(sharded, 2) as shards:
        shards.step(first, y, loss_fn)
        shards.step(then, y, loss_fn)
    _, _, grads = _one_pass(net(), then, y, loss_fn)
    for got, want in zip(sharded.grads(), grads):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)


def test_map_chunks_keeps_the_order_and_runs_as_many_threads_as_asked(monkeypatch):
    """0 threads: one per usable CPU; never more threads than chunks; one thread or one chunk: no pool."""
    from concurrent.futures import ThreadPoolExecutor

    from digitlab.nn import model as model_module

    pools = []

    class Pool(ThreadPoolExecutor):
        def __init__(self, workers, **kw):
            pools.append(workers)
            super().__init__(workers, **kw)

    monkeypatch.setattr(model_module, "ThreadPoolExecutor", Pool)
    monkeypatch.setattr(model_module.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    starts = range(0, 50, 10)                     # 5 chunks
    for threads, workers in [(0, [3]), (1, []), (2, [2]), (3, [3]), (8, [5])]:
        pools.clear()
        assert model_module._map_chunks(lambda s: s * s, starts, threads) == [s * s for s in starts]
        assert pools == workers, threads
    pools.clear()
    assert model_module._map_chunks(lambda s: s + 1, [0], 4) == [1] and pools == []


def test_the_train_command_passes_shards_to_the_recipe(monkeypatch):
    import digitlab.train
    from digitlab.cli import main

    seen = {}

    class Stop(Exception):
        pass

    def fake_train_recipe(recipe, overrides, **kw):
        seen.update(recipe=recipe, **overrides)
        raise Stop

    monkeypatch.setattr(digitlab.train, "train_recipe", fake_train_recipe)
    with pytest.raises(Stop):
        main(["train", "--recipe", "cnn", "--shards", "3", "--quiet"])
    assert seen == {"recipe": "cnn", "shards": 3} and type(seen["shards"]) is int


@pytest.mark.parametrize("folded", [False, True])
def test_chunked_scores_in_threads_are_the_rows_of_one_forward_pass(folded):
    """Any chunk size and thread count: every image's scores, in the images' order (a CNN normalises each chunk;
    an MLP on uint8 pixels folds the normalisation into its first layer)."""
    from digitlab.nn import Classifier

    rng = np.random.default_rng(3)
    if folded:
        net = Sequential([Flatten(), Linear(out_features=16), ReLU(), Linear(out_features=5)], input_shape=(9, 9),
                         rng=rng)
    else:
        net = _cnn(np.float32)
    model = Classifier(net, class_names=list("abcde"), input_shape=[9, 9])
    images = rng.integers(0, 256, (150, 9, 9)).astype(np.uint8)
    want = net.forward(model.prepare(images), train=False)
    for threads, batch_size in [(1, 64), (2, 64), (3, 7), (2, 150), (4, 1000)]:
        model.inference_threads = threads
        np.testing.assert_allclose(model.scores(images, batch_size), want, rtol=1e-5, atol=1e-5,
                                   err_msg=f"{threads} threads, chunks of {batch_size}")


def test_cnns_score_chunks_in_threads_on_one_blas_thread_and_mlps_on_blas_threads():
    """A CNN's default: chunk threads (one per CPU), BLAS limited to one thread while they run and restored after;
    a network of Linear layers: one chunk at a time on BLAS's own threads."""
    from threadpoolctl import threadpool_info

    from digitlab.nn import Classifier

    def blas_threads():
        return {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}

    rng = np.random.default_rng(4)
    cnn = Classifier(_cnn(np.float32), class_names=list("abcde"), input_shape=[9, 9])
    mlp = Classifier(Sequential([Flatten(), Linear(out_features=5)], input_shape=(9, 9), rng=rng),
                     class_names=list("abcde"), input_shape=[9, 9])
    assert (cnn.inference_threads, mlp.inference_threads) == (0, 1)
    before = blas_threads()
    seen = []
    forward = cnn.net.forward

    def spy(x, train=True):
        seen.append((threading.current_thread().name, blas_threads()))
        return forward(x, train)

    cnn.net.forward = spy
    cnn.inference_threads = 2
    cnn.scores(rng.integers(0, 256, (40, 9, 9)).astype(np.uint8), batch_size=10)
    assert len(seen) == 4 and all(name.startswith("digitlab-infer") and b == {1} for name, b in seen)
    assert blas_threads() == before
