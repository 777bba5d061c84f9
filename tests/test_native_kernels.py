"""The native per-example convolution loop (privacy/native_kernels.py) against a per-example loop of
autograd's own kernel in float64, over the geometries its tiling splits differently; its build and
its fallback to oneDNN's grouped kernel."""

import os
import signal

import pytest
import torch

from privacy import fast_dpsgd, native_kernels

pytestmark = pytest.mark.skipif(native_kernels._compiler() is None,
                                reason="no C compiler: the engine uses the grouped kernel")


def loop_in_float64(conv, a, delta):
    """Each example's weight gradient, one example at a time, in float64."""
    weight_shape = conv.weight.shape
    return torch.stack([torch.nn.grad.conv2d_weight(
        a[i:i + 1].double(), weight_shape, delta[i:i + 1].double(), stride=conv.stride,
        padding=conv.padding, dilation=conv.dilation) for i in range(len(a))])


# (in, out, kernel, stride, padding, dilation, input size): out channels below, at and across the
# 16-wide vector; kernels wider than a tile's 8 columns; more (channel, row) pairs than a tile's 8;
# asymmetric kernels, strides and padding; padding wider than the kernel reads; a 1×1 map.
GEOMETRIES = [
    (3, 16, 7, 2, 3, 1, (32, 32)),  # a ResNet stem
    (3, 1, 3, 1, 1, 1, (9, 7)),
    (1, 17, 5, 1, 2, 1, (6, 8)),
    (4, 40, (3, 11), (1, 2), (1, 5), 1, (10, 23)),
    (20, 33, 3, 1, 1, 1, (5, 5)),
    (5, 20, 3, 1, 2, 2, (9, 9)),
    (2, 8, (1, 9), (3, 1), (0, 4), (1, 2), (13, 12)),
    (6, 16, 1, 2, 0, 1, (8, 8)),
    (3, 4, 3, 1, 3, 1, (1, 1)),
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[str(g) for g in GEOMETRIES])
@pytest.mark.parametrize("batch", [1, 5])
def test_the_native_loop_is_a_per_example_loop(geometry, batch):
    channels, out_channels, kernel, stride, padding, dilation, size = geometry
    conv = torch.nn.Conv2d(channels, out_channels, kernel, stride=stride, padding=padding,
                           dilation=dilation, bias=False)
    generator = torch.Generator().manual_seed(7)
    a = torch.randn(batch, channels, *size, generator=generator)
    delta = torch.randn(conv(a).shape, generator=generator)
    grads = native_kernels.weight_gradients(a, delta, conv)
    assert grads is not None and grads.dtype == torch.float32
    assert grads.shape == (batch, *conv.weight.shape)
    reference = loop_in_float64(conv, a, delta)
    # float32 sums of up to 256 products: rounding relative to the largest entry's scale
    torch.testing.assert_close(grads.double(), reference, rtol=1e-5,
                               atol=2e-6 * reference.abs().max().item())
    grouped_error = (fast_dpsgd.grouped_weight_gradients(a, delta, conv).double() - reference).abs()
    assert ((grads.double() - reference).abs().max()
            <= 4 * grouped_error.max() + 1e-6 * reference.abs().max())  # as exact as the grouped kernel


def test_it_reads_strided_inputs_and_an_empty_batch():
    conv = torch.nn.Conv2d(3, 16, 7, stride=2, padding=3, bias=False)
    a = torch.randn(4, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    delta = torch.randn(4, 8, 8, 16).permute(0, 3, 1, 2)  # a (B, out, H', W') view, not contiguous
    torch.testing.assert_close(native_kernels.weight_gradients(a, delta, conv).double(),
                               loop_in_float64(conv, a, delta), rtol=1e-5, atol=1e-5)
    empty = native_kernels.weight_gradients(a[:0], delta[:0], conv)
    assert empty.shape == (0, 16, 3, 7, 7)


def test_it_leaves_other_convolutions_to_the_caller():
    a, delta = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    for conv in (torch.nn.Conv2d(4, 4, 3, padding="same", bias=False),
                 torch.nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False),
                 torch.nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect", bias=False)):
        assert native_kernels.weight_gradients(a, delta, conv) is None


def test_it_refuses_an_output_gradient_of_another_shape():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    with pytest.raises(ValueError, match="output gradient of shape"):
        native_kernels.weight_gradients(torch.randn(2, 3, 8, 8), torch.randn(2, 4, 7, 8), conv)


def test_the_native_loop_built_here_and_says_so():
    assert native_kernels.status().startswith("native loop (per_example_conv.c")


def test_float64_and_a_failed_build_fall_back_to_the_grouped_kernel(monkeypatch):
    conv = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=False)
    a, delta = torch.randn(4, 3, 9, 9), torch.randn(4, 5, 5, 5)
    assert native_kernels.weight_gradients(a.double(), delta.double(), conv.double()) is None
    grouped = fast_dpsgd.grouped_weight_gradients(a, delta, conv)
    torch.testing.assert_close(fast_dpsgd.cpu_weight_gradients(a, delta, conv), grouped)

    monkeypatch.setattr(native_kernels, "_state", {})
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert native_kernels.weight_gradients(a, delta, conv) is None
    assert native_kernels.status() == ("oneDNN grouped kernel (no C compiler found for the native "
                                       "loop)")
    assert torch.equal(fast_dpsgd.cpu_weight_gradients(a, delta, conv), grouped)

    monkeypatch.setattr(native_kernels, "_state", {})
    monkeypatch.setenv("CC", "false")  # a compiler that fails: the build's message is kept
    assert native_kernels.weight_gradients(a, delta, conv) is None
    assert native_kernels.status().startswith("oneDNN grouped kernel (the native loop did not "
                                              "build")


def test_the_result_does_not_depend_on_the_number_of_threads():
    conv = torch.nn.Conv2d(3, 20, 5, stride=2, padding=2, bias=False)
    a, delta = torch.randn(7, 3, 12, 12), torch.randn(7, 20, 6, 6)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native_kernels.weight_gradients(a, delta, conv)
        torch.set_num_threads(3)
        three = native_kernels.weight_gradients(a, delta, conv)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, three)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_compiled_step_runs_the_loop_eagerly(threads):
    """training.compile traces the padded clipping with TorchDynamo; the loop (a foreign function,
    and a thread pool with more than one thread) runs outside the trace, with the same result."""
    conv = torch.nn.Conv2d(3, 16, 3, padding=1, bias=False)
    a, delta = torch.randn(4, 3, 6, 6), torch.randn(4, 16, 6, 6)

    def norms(a, delta):
        return native_kernels.weight_gradients(a, delta, conv).flatten(1).norm(dim=1) * 2

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        torch._dynamo.reset()  # no trace cached from the other thread count
        compiled = torch.compile(norms, backend="eager")
        torch.testing.assert_close(compiled(a, delta), norms(a, delta))
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_gets_its_own_threads():
    """A child forked after the pool exists has the pool object but not its threads; the loop
    must make new ones there rather than wait forever."""
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    a, delta = torch.randn(4, 3, 5, 5), torch.randn(4, 8, 5, 5)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        expected = native_kernels.weight_gradients(a, delta, conv)  # the pool exists now
        child = os.fork()
        if child == 0:  # the child: exit 0 only if it computes the same, within 60 s
            signal.alarm(60)
            same = torch.equal(native_kernels.weight_gradients(a, delta, conv), expected)
            os._exit(0 if same else 1)
        _, code = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(code) == 0
    finally:
        torch.set_num_threads(before)
