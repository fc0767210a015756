"""The CPU inference path of conv2d / conv_transpose2d (csrc/cpu/prepacked.h, switched by
genkern/ops/_prepacked.py): a oneDNN weight packed once per geometry and weight values (checked
by fingerprint, or by version for frozen weights), bias and activation as post-ops; in auto mode
a geometry's first call times the regular path, the packed one, (one-group float32 layers) the
batched-GEMM path and (where they run) the direct kernels, the fastest kept for the geometry."""

import copy
import gc
import io
import subprocess
import sys

import pytest
import torch

import genkern
from genkern import _ext, backends
from genkern.ops import _prepacked, _winograd

pytestmark = pytest.mark.skipif(
    not _prepacked.AVAILABLE
    or backends.unavailable_reason("cpu", torch.device("cpu"), torch.float32) is not None,
    reason="needs the C++ extension and a torch built with oneDNN (mkldnn)",
)

LAYERS = [
    lambda act: genkern.nn.Conv2d(3, 8, 4, 2, 1, activation=act, negative_slope=0.2),
    lambda act: genkern.nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False, activation=act),
    lambda act: genkern.nn.ConvTranspose2d(6, 4, 4, 2, 1, activation=act),
    lambda act: genkern.nn.ConvTranspose2d(6, 3, 3, 2, 1, output_padding=1, activation=act),
]
IN_CHANNELS = [3, 4, 6, 6]


@pytest.fixture(autouse=True)
def fresh_choices():
    """Each test from an empty cache: auto mode's choices are per geometry, and one test's
    choice would otherwise be another's on a layer of the same shapes (entering a mode clears)."""
    with _prepacked.mode("auto"):
        yield


@pytest.fixture
def always():
    with _prepacked.mode("always"):
        yield


def _stock(layer, x):
    z = (
        torch.nn.functional.conv_transpose2d
        if isinstance(layer, torch.nn.ConvTranspose2d)
        else None
    )
    if z is not None:
        z = z(
            x,
            layer.weight,
            layer.bias,
            layer.stride,
            layer.padding,
            layer.output_padding,
            layer.groups,
            layer.dilation,
        )
    else:
        z = torch.nn.functional.conv2d(
            x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups
        )
    return genkern.reference.activation(z, layer.activation, layer.negative_slope)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("act", [None, "relu", "leaky_relu", "tanh", "sigmoid", "silu"])
@pytest.mark.parametrize("i", range(len(LAYERS)))
def test_packed_path_matches_stock_and_repeats_bit_identically(i, act, layout, always):
    torch.manual_seed(i)
    layer = LAYERS[i](act).eval()
    x = torch.randn(2, IN_CHANNELS[i], 9, 8)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        outs = [layer(x) for _ in range(3)]
        ref = _stock(layer, x)
    assert _prepacked.state(layer.weight) == "packed"
    torch.testing.assert_close(outs[0], ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])
    assert outs[1].stride() == ref.stride()


def test_weight_update_repacks(always):
    layer = genkern.nn.ConvTranspose2d(4, 3, 4, 2, 1, activation="relu")
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        layer(x)
        layer.weight.mul_(-2.0)  # in place: the version counter moves
        torch.testing.assert_close(layer(x), _stock(layer, x), rtol=1e-5, atol=1e-5)
        layer.load_state_dict({k: v * 0.5 for k, v in layer.state_dict().items()})
        torch.testing.assert_close(layer(x), _stock(layer, x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            layer(x[:, :, :4]), _stock(layer, x[:, :, :4]), rtol=1e-5, atol=1e-5
        )


def test_grad_calls_skip_the_packed_path_and_bad_input_still_raises(always):
    layer = genkern.nn.Conv2d(3, 5, 3, activation="relu")
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    y = layer(x)
    assert y.grad_fn is not None and _prepacked.state(layer.weight) is None
    with torch.no_grad():
        layer(x)
        with pytest.raises(RuntimeError, match="expected input.*to have 3 channels"):
            layer(torch.randn(2, 4, 6, 6))


def test_deepcopy_and_save_with_a_packed_weight(always):
    model = torch.nn.Sequential(genkern.nn.Conv2d(3, 4, 3), genkern.nn.ConvTranspose2d(4, 2, 2, 2))
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        y = model(x)
        twin = copy.deepcopy(model)
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        assert torch.equal(twin(x), y) and torch.equal(loaded(x), y)


def test_auto_mode_keeps_one_choice_per_shape():
    layer = genkern.nn.Conv2d(3, 4, 3, padding=1, activation="relu").eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        first = layer(x)
        assert _prepacked.state(layer.weight) in ("packed", "regular", "gemm", "direct")
        assert torch.equal(first, layer(x)) and torch.equal(layer(x), layer(x))
        torch.testing.assert_close(first, _stock(layer, x), rtol=1e-5, atol=1e-5)


def test_geometries_onednn_cannot_pack_fall_back_to_the_regular_path(always):
    # found by the fuzz: a 1x1 transposed conv with dilation 2 and output_padding 1 has no
    # packed oneDNN primitive; the call must still give torch's result
    x, w = torch.randn(1, 1, 1, 1), torch.randn(1, 1, 1, 1)
    for _ in range(2):
        with torch.no_grad():
            y = genkern.ops.conv_transpose2d(x, w, stride=2, output_padding=1, dilation=2)
        ref = torch.nn.functional.conv_transpose2d(x, w, stride=2, output_padding=1, dilation=2)
        torch.testing.assert_close(y, ref)


def test_never_mode_and_dead_weights_leave_no_entry():
    layer = genkern.nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 6, 6)
    with _prepacked.mode("never"), torch.no_grad():
        layer(x)
        assert _prepacked.state(layer.weight) is None
    with _prepacked.mode("always"), torch.no_grad():
        layer(x)
        assert _prepacked.state(layer.weight) == "packed"
        twin = genkern.nn.Conv2d(3, 4, 3)
        del layer
        twin(x)  # a store drops the entries of weights that are gone
        assert _prepacked.state(twin.weight) == "packed"


def test_mode_names_are_checked():
    with pytest.raises(ValueError, match="prepack mode must be one of"):
        _prepacked.set_mode("sometimes")


@pytest.mark.parametrize("transposed", [False, True])
def test_strided_bias_and_input_are_read_by_their_strides(transposed, always):
    # found by the thorough fuzz: oneDNN read a strided bias view as if it were contiguous
    x = torch.randn(2, 4, 7, 6)[:, :, ::2]
    b = torch.randn(8)[1::2]
    w = torch.randn(4, 4, 3, 3)[:, :, :, :]
    op = genkern.ops.conv_transpose2d if transposed else genkern.ops.conv2d
    stock = torch.nn.functional.conv_transpose2d if transposed else torch.nn.functional.conv2d
    for _ in range(2):
        with torch.no_grad():
            y = op(x, w, b, padding=1, activation="relu")
        torch.testing.assert_close(y, torch.relu(stock(x, w, b, padding=1)))
    assert _prepacked.state(w) == "packed"


@pytest.mark.parametrize("transposed", [False, True])
def test_outputs_no_tap_reaches_take_the_regular_path(transposed, always):
    # an output column whose window lies wholly in the padding (a 1-column input, 1x1 kernel,
    # stride 2, dilation 2, padding 1) or that no input pixel reaches: oneDNN's packed conv with
    # a bias post-op crashed the process here (SIGSEGV on an AVX-512 Xeon, found by the fuzz)
    g = torch.Generator().manual_seed(0)
    if transposed:
        x, w = torch.randn(1, 6, 1, 4, generator=g), torch.randn(6, 1, 2, 3, generator=g)
        kw = dict(stride=1, padding=[1, 0], groups=2, dilation=2)
        fn, stock = genkern.ops.conv_transpose2d, torch.nn.functional.conv_transpose2d
    else:
        x, w = torch.randn(1, 6, 1, 1, generator=g), torch.randn(2, 3, 1, 1, generator=g)
        kw = dict(stride=[1, 2], padding=[0, 1], groups=2, dilation=[1, 2])
        fn, stock = genkern.ops.conv2d, torch.nn.functional.conv2d
    b = torch.randn(2, generator=g)
    y = fn(x, w, b, **kw, activation="tanh")
    torch.testing.assert_close(y, torch.tanh(stock(x, w, b, **kw)))
    assert _prepacked.state(w) is None  # never packed


# batch-1 decoder and encoder layers (one group, float32): the candidates of auto mode
SMALL_BATCH = [
    lambda act: genkern.nn.ConvTranspose2d(16, 1, 4, 2, 1, activation=act),  # AE-like last
    lambda act: genkern.nn.ConvTranspose2d(64, 32, 4, 2, 1, activation=act),  # VAE decoder
    lambda act: genkern.nn.ConvTranspose2d(8, 5, 3, 2, 1, output_padding=1, activation=act),
    lambda act: genkern.nn.Conv2d(32, 64, 3, padding=1, activation=act),  # CIFAR CNN
    lambda act: genkern.nn.Conv2d(6, 7, 4, 2, 1, dilation=1, activation=act, negative_slope=0.2),
]
SMALL_BATCH_INPUTS = [(16, 14), (64, 7), (8, 5), (32, 16), (6, 9)]
PATHS = ("packed", "regular", "gemm", "direct", "winograd")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("act", [None, "relu", "leaky_relu", "sigmoid"])
@pytest.mark.parametrize("i", range(len(SMALL_BATCH)))
def test_auto_mode_at_batch_1_matches_stock_on_the_path_it_keeps(i, act, layout):
    """Whatever path auto mode keeps (packed, regular, batched GEMM, direct, Winograd), the result
    is stock's, in the layout stock gives, and repeats bit-identically."""
    torch.manual_seed(i)
    layer = SMALL_BATCH[i](act).eval()
    channels, size = SMALL_BATCH_INPUTS[i]
    x = torch.randn(1, channels, size, size)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        first = layer(x)
        assert _prepacked.state(layer.weight) in PATHS
        again = layer(x)
        expected = _stock(layer, x)
    assert torch.equal(first, again)
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)
    for fmt in (torch.contiguous_format, torch.channels_last):
        assert first.is_contiguous(memory_format=fmt) == expected.is_contiguous(memory_format=fmt)


def test_auto_mode_keeps_the_gemm_path_where_it_wins_by_far():
    """16 -> 1 channels 14x14 -> 28x28 at batch 1: the batched-GEMM path ~6x faster than oneDNN's
    deconvolution (13 vs 84 us on a 2-core Xeon), so auto mode keeps it; with the GEMM path
    switched off it is no candidate. The choice is timed: on a machine busy with other work one
    timing can lose, so the choice is made afresh (set_mode clears the cache) up to three times."""
    from genkern.ops import _conv_gemm

    torch.manual_seed(0)
    x = torch.randn(1, 16, 14, 14)
    layer = SMALL_BATCH[0]("sigmoid").eval()
    with torch.no_grad(), _prepacked.mode("auto"):
        kept = []
        for _ in range(3):
            _prepacked.set_mode("auto")
            y = layer(x)
            kept.append(_prepacked.state(layer.weight))
            if kept[-1] == "gemm":
                break
        assert kept[-1] == "gemm", f"auto mode kept {kept}"
        torch.testing.assert_close(y, _stock(layer, x), rtol=1e-5, atol=1e-5)
        other = SMALL_BATCH[0]("sigmoid").eval()
        with _conv_gemm.mode("never"):
            other(x)
            assert _prepacked.state(other.weight) in ("packed", "regular", "direct")
            y_again = layer(x)  # its kept GEMM path is no longer offered: timed again
            assert _prepacked.state(layer.weight) != "gemm"
            torch.testing.assert_close(y_again, y, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(
    not (_ext.HAS_CPU and _ext._C.avx512_kernels_enabled()),
    reason="measured on AVX-512's direct kernels; the AVX2 ones are a candidate that need not win",
)
def test_auto_mode_keeps_the_direct_kernels_on_batch_1_cnn_layers():
    """The CIFAR CNN's 32 -> 64 (16x16) and 64 -> 128 (8x8) 3x3 convs at batch 1: genkern's
    direct kernels ran them in 57-87 and ~100 us against ATen's 122-154 and 127 (2-core Xeon),
    so auto mode keeps them on at least one (Winograd's candidate, which can beat both, not
    offered); the kept result has the bits of the same kernels' training-path call. With
    GENKERN_CPU_STEM_CONV "never" they are no candidate."""
    from genkern.ops import _stem_conv

    with _winograd.mode("never"):
        torch.manual_seed(0)
        shapes = [(32, 64, 16), (64, 128, 8)]
        layers = [
            genkern.nn.Conv2d(i, o, 3, padding=1).to(memory_format=torch.channels_last).eval()
            for i, o, _ in shapes
        ]
        xs = [torch.randn(1, i, s, s).to(memory_format=torch.channels_last) for i, _, s in shapes]
        states = []
        for layer, x in zip(layers, xs):
            with torch.no_grad():
                y = layer(x)
            states.append(_prepacked.state(layer.weight))
            if states[-1] == "direct":
                with _stem_conv.mode("always"):
                    assert torch.equal(y, layer(x).detach())  # a graph-recording call: same kernels
            torch.testing.assert_close(y, _stock(layer, x), rtol=1e-4, atol=1e-4)
        assert "direct" in states, states
        with _stem_conv.mode("never"), torch.no_grad():  # a kept direct path no longer offered
            for layer, x in zip(layers, xs):
                torch.testing.assert_close(layer(x), _stock(layer, x), rtol=1e-4, atol=1e-4)
                assert _prepacked.state(layer.weight) != "direct"
            other = genkern.nn.Conv2d(32, 64, 3, padding=1).to(memory_format=torch.channels_last)
            other.eval()(xs[0])
            assert _prepacked.state(other.weight) != "direct"


def _direct_layer():
    """A batch-1 channels_last 3x3 layer and input on which the direct kernels are a candidate."""
    layer = genkern.nn.Conv2d(32, 64, 3, padding=1).to(memory_format=torch.channels_last).eval()
    return layer, torch.randn(1, 32, 16, 16).to(memory_format=torch.channels_last)


@pytest.mark.parametrize("path", ["packed", "direct", "winograd"])
def test_writes_through_data_are_seen(path):
    # found by the fuzz: .data writes leave the version counter as it was, and the packed copy
    # (keyed by it) was used stale: EMA updates, init code writing through .data. The Winograd
    # path's transformed weight is kept the same way.
    torch.manual_seed(0)
    layer, x = _direct_layer()
    mode = "always" if path == "packed" else "auto"
    winograd = "always" if path == "winograd" else "never"
    with _prepacked.mode(mode), _winograd.mode(winograd), torch.no_grad():
        for _ in range(3):  # auto mode's choice is timed: a busy machine can make it lose
            _prepacked.set_mode(mode)
            layer(x)
            if _prepacked.state(layer.weight) == path:
                break
        if _prepacked.state(layer.weight) != path:
            pytest.skip(f"auto mode kept {_prepacked.state(layer.weight)!r} three times here")
        for write in (
            lambda: layer.weight.data.copy_(torch.randn_like(layer.weight)),
            lambda: layer.weight.data.mul_(-1.0),
            lambda: layer.weight.data[5, 3, 1, 2].add_(4.0),
            lambda: layer.bias.data.add_(1.0),
        ):
            write()
            torch.testing.assert_close(layer(x), _stock(layer, x), rtol=1e-4, atol=1e-4)
            assert _prepacked.state(layer.weight) == path


def test_weight_resized_through_data_is_seen(always):
    # found by the fuzz: the key held the weight's strides, pointer and version but not its sizes
    layer = genkern.nn.Conv2d(8, 6, 3, padding=1).eval()
    x = torch.randn(1, 8, 7, 7)
    with torch.no_grad():
        layer(x)
        layer.weight.data = layer.weight.data[:4]  # same storage, pointer, strides and version
        layer.bias.data = layer.bias.data[:4]
        y = layer(x)
        assert y.shape == (1, 4, 7, 7)
        torch.testing.assert_close(y, _stock(layer, x), rtol=1e-5, atol=1e-5)


def test_an_updated_weight_repacks_without_timing_again():
    # the choice is per geometry: an optimizer step's new version, or a new weight of the same
    # shapes, packs its values but is not timed again (a timing runs the layer ~10 times: 1.1 s
    # per call of a 64x64x32x32 -> 128 conv at batch 64 when every version was timed)
    layer, x = _direct_layer()
    with _prepacked.mode("auto"), torch.no_grad():
        layer(x)
        assert _ext._C.prepack_timings() == 1
        for _ in range(3):
            layer.weight.add_(0.1)
            torch.testing.assert_close(layer(x), _stock(layer, x), rtol=1e-4, atol=1e-4)
        twin, _ = _direct_layer()
        torch.testing.assert_close(twin(x), _stock(twin, x), rtol=1e-4, atol=1e-4)
        assert _ext._C.prepack_timings() == 1
        layer(x[..., :15])  # a new shape: timed
        assert _ext._C.prepack_timings() == 2


def test_frozen_weights_are_checked_by_their_version(always):
    layer = genkern.nn.ConvTranspose2d(4, 3, 4, 2, 1, activation="relu").eval()
    x = torch.randn(1, 4, 5, 5)
    model = genkern.nn.freeze(torch.nn.Sequential(layer))
    with torch.no_grad():
        model(x)
        layer.weight.mul_(-2.0)  # a tracked write: repacked
        packed = _stock(layer, x)
        torch.testing.assert_close(model(x), packed, rtol=1e-5, atol=1e-5)
        layer.weight.data.mul_(-0.5)  # freeze's contract: a write through .data is not seen ...
        torch.testing.assert_close(model(x), packed, rtol=1e-5, atol=1e-5)
        genkern.nn.unfreeze(model)  # ... until unfrozen
        torch.testing.assert_close(model(x), _stock(layer, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.Adam(p, 0.1, fused=True),
        lambda p: torch.optim.AdamW(p, 0.1, fused=True),
        lambda p: torch.optim.SGD(p, 0.1, fused=True),
        lambda p: torch.optim.Adam(p, 0.1, foreach=True),
    ],
    ids=["adam-fused", "adamw-fused", "sgd-fused", "adam-foreach"],
)
def test_frozen_weights_repack_after_an_optimizer_step(always, make_opt):
    # found by a fuzz: a fused step writes the parameters without bumping their version counters,
    # and a frozen conv ran on its stale packed weight (off by 4.4)
    torch.manual_seed(0)
    layer = genkern.nn.freeze(genkern.nn.Conv2d(16, 32, 3, padding=1))
    opt = make_opt(layer.parameters())
    x = torch.randn(1, 16, 8, 8)
    for _ in range(2):
        with torch.no_grad():
            layer(x)  # packs the weight
        layer(torch.randn(2, 16, 8, 8)).square().mean().backward()
        opt.step()
        with torch.no_grad():
            torch.testing.assert_close(layer(x), _stock(layer, x), rtol=1e-5, atol=1e-5)


def test_a_dead_weights_packed_copy_goes_while_another_model_serves(always):
    # found by a fuzz: only a new store swept the entries of dead weights, so a model served on
    # after another was deleted kept the deleted one's packed weights (75 MB in its repro)
    x = torch.randn(1, 8, 6, 6)
    served, dropped = (genkern.nn.Conv2d(8, 8, 3, padding=1).eval() for _ in range(2))
    with torch.no_grad():
        served(x)
        dropped(x)
        assert _ext._C.prepack_entries() >= 2
        before = _ext._C.prepack_entries()
        del dropped
        gc.collect()
        for _ in range(300):  # hits sweep every 256
            served(x)
    assert _ext._C.prepack_entries() == before - 1
    assert _prepacked.state(served.weight) == "packed"


def test_a_weight_past_eight_timed_geometries_takes_its_most_chosen_path():
    # found by a fuzz: every new input shape's first call timed the paths (~10 calls' worth), so
    # an inference server whose batch sizes keep changing ran 2.3-3x slower than stock
    layer = genkern.nn.Conv2d(8, 8, 3, padding=1).eval()
    with _prepacked.mode("auto"), torch.no_grad():
        for batch in range(1, 13):
            x = torch.randn(batch, 8, 6, 6)
            torch.testing.assert_close(layer(x), _stock(layer, x), rtol=1e-5, atol=1e-5)
            assert _ext._C.prepack_timings() == min(batch, 8)
        assert _prepacked.state(layer.weight) is not None


def test_fingerprint_sees_any_change_of_bytes():
    fp = _ext._C.fingerprint
    torch.manual_seed(0)
    for n in (1, 7, 16, 1000, 4099):  # tails of 0 to 15 floats past the 64-byte stripes
        t = torch.randn(n)
        base = fp(t)
        assert fp(t.clone()) == base
        for i in {0, n // 2, n - 1}:
            u = t.clone()
            u.view(torch.int32)[i] ^= 1  # one bit
            assert fp(u) != base, (n, i)
        if n > 1:
            assert fp(t.roll(1)) != base and fp(t.flip(0)) != base
    t = torch.zeros(64)  # zero words, where lo * hi products vanish without the key
    for i in range(64):
        u = t.clone()
        u[i] = 1.0
        assert fp(u) != fp(t), i
    a = torch.arange(24.0).view(4, 6)
    assert fp(a.t()) == fp(a)  # non-overlapping and dense: its bytes in memory order
    assert fp(a[:, ::2]) == fp(a[:, ::2].contiguous())  # else a contiguous copy's


@pytest.mark.parametrize("mode", ["auto", "always"])
def test_inference_tensor_weights(mode):
    # found by the fuzz: weights made under inference_mode have no version counter, and reading
    # it raised on every call; they are checked by fingerprint (frozen or not)
    with torch.inference_mode():
        layers = [genkern.nn.Conv2d(8, 6, 3, padding=1), genkern.nn.ConvTranspose2d(8, 6, 4, 2, 1)]
    x = torch.randn(1, 8, 6, 6)
    with _prepacked.mode(mode), torch.no_grad():
        for layer in layers:
            genkern.nn.freeze(layer)
            torch.testing.assert_close(layer(x), _stock(layer, x), rtol=1e-5, atol=1e-5)


def test_frozen_weight_given_new_storage_repacks(always):
    # found by the fuzz: `.data = t` keeps the version counter, and a new storage at the freed
    # one's address passed a frozen weight's check; the entry holds its storage weakly now
    layer = genkern.nn.Conv2d(8, 6, 3, padding=1).eval()
    x = torch.randn(1, 8, 6, 6)
    genkern.nn.freeze(layer)
    with torch.no_grad():
        for _ in range(4):
            layer(x)
            layer.weight.data = torch.randn_like(layer.weight)
            torch.testing.assert_close(layer(x), _stock(layer, x), rtol=1e-5, atol=1e-5)
        layer.to(torch.bfloat16).to(torch.float32)  # what .to() does to parameters
        torch.testing.assert_close(layer(x), _stock(layer, x), rtol=1e-5, atol=1e-5)


def test_cache_calls_from_other_threads_do_not_deadlock():
    # found by the fuzz: a thread in conv inference held the cache's mutex while reviving the
    # weight's Python object (which takes the GIL), and a thread holding the GIL waited on the
    # mutex (state, freeze, set_mode). In a subprocess: a deadlock is a timeout, not a hang.
    code = """
import threading, time, torch, genkern
from genkern.ops import _prepacked
torch.set_num_threads(1)
conv = genkern.nn.Conv2d(16, 16, 3, padding=1).eval()
x = torch.randn(1, 16, 8, 8)
stop = []
def infer():
    with torch.no_grad():
        while not stop:
            conv(x)
t = threading.Thread(target=infer)
t.start()
start = time.perf_counter()
i = 0
while time.perf_counter() - start < 5:  # the old code hung within a second or two
    _prepacked.state(conv.weight)
    if i % 100 == 0:
        (genkern.nn.freeze if i % 200 else genkern.nn.unfreeze)(conv)
    i += 1
stop.append(1)
t.join()
print("done")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "done", out.stderr


@pytest.mark.parametrize("act,slope", [("relu", 0.01), ("leaky_relu", 0.0)])
@pytest.mark.parametrize("i", range(len(LAYERS)))
def test_relu_keeps_nan_on_the_packed_path(i, act, slope, always):
    # found by the fuzz: oneDNN's relu post-op is max(x, 0), NaN -> 0; torch keeps NaN
    layer = LAYERS[i](act).eval()
    layer.negative_slope = slope
    x = torch.randn(2, IN_CHANNELS[i], 9, 8)
    x[0, 0, 4, 4] = float("nan")
    with torch.no_grad():
        y, ref = layer(x), _stock(layer, x)
    assert _prepacked.state(layer.weight) == "packed"
    assert torch.isnan(ref).any() and torch.equal(torch.isnan(y), torch.isnan(ref))
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_run_unpacked(value, always):
    # found by the fuzz: oneDNN's packed convs skip the taps in the padding, where stock's give
    # NaN (NaN * 0, inf * 0): such a weight takes the regular path
    layer = genkern.nn.Conv2d(8, 4, 3, padding=1).eval()
    with torch.no_grad():
        layer.weight[1, 2, 0, 0] = value
        x = torch.randn(1, 8, 6, 6)
        y, ref = layer(x), _stock(layer, x)
    assert _prepacked.state(layer.weight) != "packed"
    assert torch.isnan(ref[0, 1, 0]).all()  # the first row's tap (0, 0) is in the padding
    assert torch.equal(torch.isnan(y), torch.isnan(ref)) and torch.equal(
        torch.isinf(y), torch.isinf(ref)
    )


def test_a_packed_weight_can_be_swapped():
    # found by the fuzz: the cache held a weak reference to the weight's TensorImpl, which
    # torch.utils.swap_tensors refuses (so did .double() with swap_module_params_on_conversion)
    layer = genkern.nn.Conv2d(3, 4, 3).eval()
    with _prepacked.mode("always"), torch.no_grad():
        layer(torch.randn(1, 3, 8, 8))
        assert _prepacked.state(layer.weight) == "packed"
        new = torch.nn.Parameter(torch.randn_like(layer.weight))
        torch.utils.swap_tensors(layer.weight, new)
        x = torch.randn(1, 3, 8, 8)
        torch.testing.assert_close(layer(x), _stock(layer, x), rtol=1e-5, atol=1e-5)
