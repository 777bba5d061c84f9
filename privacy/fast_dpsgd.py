"""DP-SGD of the project's own (``privacy.engine: fast``): the same algorithm as Opacus', faster.

The algorithm is DP-SGD exactly (Abadi et al. 2016): every step samples each training example
independently with probability q (Poisson), clips each sampled example's whole gradient to
``max_grad_norm`` C, adds N(0, σ²C²) to the sum of the clipped gradients, divides by the expected
batch size q·N (Opacus' ``loss_reduction="mean"``), and records (σ, q) with the same Opacus
accountant. What differs is how the clipped sum is computed: by book-keeping (Bu et al., "Differentially
Private Optimization on Large Model at Small Cost", ICML 2023) from what one ordinary backward pass
leaves behind, not from one materialized gradient per example per parameter:

- each supported layer keeps its input a (forward hook) and the gradient δ of the loss with respect
  to its output (a hook on the output tensor); the parameters themselves are kept out of autograd
  while training, since their ordinary gradients would be the unclipped sums computed again here;
- a :class:`torch.nn.Linear` on (B, in) inputs has per-example weight gradient δᵢaᵢᵀ, whose norm is
  ‖δᵢ‖·‖aᵢ‖ (no per-example gradient is formed), and the clipped sum Σᵢ cᵢδᵢaᵢᵀ is the one product
  (c ⊙ δ)ᵀ·a;
- a :class:`torch.nn.Conv2d` takes, layer by layer, the cheaper of Bu et al.'s two forms
  (:func:`conv_route`): on large maps (few positions L² against out·in·k²) each example's gradient
  is formed (on the CPU by a native loop, :mod:`privacy.native_kernels`, or where that cannot be
  built as one convolution's weight gradient with a group per example; elsewhere from the unfolded
  input), on small maps the norm comes from ghost clipping's two L×L products
  (the input's from its pixel Gram where that is cheaper than unfolding, :func:`input_gram`) and
  the clipped sum is the layer's ordinary weight gradient of the reweighted δ; a layer with a
  single output position is a Linear layer on the window it reads;
- a :class:`torch.nn.GroupNorm`'s per-example gradients are per channel, Σ over space of δ·x̂ and
  δ, from the forward pass's own group means and deviations;
- a chain of Linear layers in one :class:`torch.nn.Sequential` whose input needs no gradient (an
  MLP on the data, :func:`linear_chains`) hands only its last layer's output to autograd; each
  earlier layer's δ is computed by hand from the next one's, with the kernels autograd would run
  (bit for bit autograd's δ), without its graph and a hook per layer;
- a trainer that writes a whole pass out itself (an MLP's, :mod:`training.mlp_pass`) hands
  the engine each layer's input and δ of the summed loss instead (:meth:`FastEngine.record_pass`),
  with no forward hook, autograd graph or backward at all; the step then proceeds as after a
  backward pass.

With cᵢ = min(1, C / (‖gᵢ‖ + 1e-6)) over each example's whole gradient (all layers), as Opacus
clips; or the factors, noise scale and per-step releases of another clipping rule
(``privacy.clipping``, :mod:`privacy.clipping`), which reads the same norms (and, for DPSGD-F, the
batch's group labels, :meth:`FastPrivateTraining.batch_groups`); the accountant then records each
step at the rule's effective noise multiplier. The loss is the mean over the sampled batch, so δ
carries 1/n and each per-example gradient is n·δᵢ ⊗ aᵢ. A model with a trainable layer of another type is refused (use Opacus). A layer used
twice in one forward pass would break the book-keeping; none of the registry's models does.

Rounding against earlier versions (issue 30): the norms of formed per-example gradients are now
taken in one pass (``vector_norm``), and small-map convolutions take the ghost norm's input product
from the pixel Gram; a Linear layer's squared norm is ‖δᵢ‖²(‖aᵢ‖² + 1) in one fused
multiply-add (weight and bias together), and each clipped sum is accumulated onto its noise by the
product itself (``addmm_``/``addmv_``) rather than formed and added. Later in issue 30: formed
per-example convolution gradients come on the CPU from oneDNN's grouped backward-weights kernel
rather than an unfold and a batched product (another order of the same sums); a GroupNorm's weight
gradient is (Σδx − μΣδ)/σ rather than Σδ·x̂ with x̂ normalized again (the subtraction's rounding
grows with |μ|/σ); a single-position convolution's norm is ‖δᵢ‖·‖windowᵢ‖ and its clipped sum a
product over the kernel offsets that see input, rather than the ghost norm and a weight gradient
that also adds the padding's zeros; the pixel Gram's k² offset blocks are added only where they
read the input (:func:`input_gram`), not over a zero-padded Gram. All of these change norms,
factors and updates by float rounding only (the per-example-loop tests hold at the same
tolerances; a formed gradient's norm and its share of the sum read the same values, so its
rounding cannot loosen the bound); flat clipping is still the engine before the clipping rules
bit for bit (tests/test_clipping.py). Last in issue 30, an MLP trained as Vanilla trains has its
pass written out by the trainer (:meth:`FastEngine.record_pass`): δ of the summed loss rather than
of the mean (no division by n and multiplication back), from the logit's δ wᵢ(σ(zᵢ) − yᵢ) rather
than autograd's formula, again float rounding only (on d805014's comparison set: scores within
1.2·10⁻⁷, no prediction, accuracy or ε changed). Then the CPU's formed per-example convolution
gradients come from the native loop (:mod:`privacy.native_kernels`) rather than the grouped
kernel: the same sums in another order, float rounding again (``trainer/info.per_example_conv``
says which kernel a run used).

Static shapes (``training.pad_batches``, :func:`physical_batches`, :meth:`FastEngine.set_padding`):
a Poisson batch's size changes every step, which makes ``torch.compile`` recompile and CUDA graphs
impossible. Padded, each logical batch is forwarded as one or more physical batches of a fixed
capacity, whose padding rows are masked out of the loss (``torch.where``, so their δ is exactly 0),
of the norms and of the clipping weights; noise is drawn once per logical step and the accountant
steps once. Soundness: the mechanism is still exactly the sampled Gaussian mechanism that the
accountant analyses. Every sampled example is clipped and summed exactly once, whatever the
batch's size (a batch over the capacity is split into several physical batches, never truncated:
dropping the examples past the capacity would make the released sum depend on whether an example
was sampled *and* fitted, and the accountant's analysis of Poisson sampling would not hold); no
unsampled example contributes (a padding row's weight is 0, and its gradient is 0 because the loss
never reads it: the supported models have no operation across examples, no batch normalization,
so the padding rows do not change the real rows' forward pass either); the noise is one draw of
N(0, σ²C²) per logical step, as unpadded. The padding and the split depend only on the batch's size,
which the released sum does not reveal beyond what Poisson sampling already accounts for, and no
extra release is made. Padding supports flat clipping only: a rule whose factors depend on the
whole batch (DPSGD-F's group counts) would see each physical batch alone.

Precision (``training.precision: bf16``): the forward and backward may run under bf16 autocast;
the recorded inputs and output gradients are then upcast to fp32 before norms, clipping factors
and clipped sums are computed, so the bound ‖cᵢgᵢ‖ ≤ C holds in fp32 for the gᵢ the sum adds
(gᵢ is the bf16 pass's gradient of example i alone, which is all the guarantee needs).

Randomness: the Poisson draws come from the trainer's batch-sampling generator, the noise from the
run's ``dp_noise`` generator (one flat draw per step), a clipping rule's releases from the
``dp_clipping`` generator, or all from the OS under ``secure_rng``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from opacus.accountants import create_accountant
from torch import nn
from torch.nn.modules import module as torch_module

from privacy import native_kernels
from privacy.accounting import resolve_noise_multiplier
from privacy.clipping import ClippingRule, ClipStep, Flat, build_rule
from privacy.engine import AccountedSteps
from privacy.noise import SecureRandom
from privacy.releases import Release
from utils.errors import ConfigError

SUPPORTED = (nn.Linear, nn.Conv2d, nn.GroupNorm)
PADDING_NEEDS_FLAT = ("training.pad_batches needs privacy.clipping: flat (got {rule!r}): the rule's "
                      "factors depend on the whole batch, which padding forwards in pieces. Use "
                      "privacy.clipping: flat, or training.pad_batches: false.")
# Recorded dtypes upcast to fp32 before clipping (autocast's).
LOW_PRECISION = (torch.bfloat16, torch.float16)


class PoissonIndexLoader:
    """``steps`` batches of training indices an epoch, each index included independently with
    probability ``sample_rate``; yields ``(indices,)`` like the trainer's plain index loader."""

    def __init__(self, num_examples: int, sample_rate: float, steps: int,
                 generator: torch.Generator | None, secure: SecureRandom | None = None):
        self.num_examples, self.sample_rate, self.steps = num_examples, sample_rate, steps
        self.generator, self.secure = generator, secure

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            if self.secure is not None:
                draws = torch.as_tensor(self.secure.uniform(self.num_examples))
            else:
                draws = torch.rand(self.num_examples, generator=self.generator)
            yield (torch.nonzero(draws < self.sample_rate).flatten(),)


def physical_capacity(expected_batch_size: float, sample_rate: float,
                      deviations: float = 4.0, multiple: int = 8) -> int:
    """The default physical batch of padded training: the expected Poisson batch qN plus
    ``deviations`` standard deviations of the binomial, √(qN(1 − q)), rounded up to a multiple of
    ``multiple`` (tensor cores and vector units like round sizes). At 4 deviations a batch overflows
    into a second physical batch on about 3 steps in 100,000 (normal tail); overflow is split,
    never dropped (:func:`physical_batches`)."""
    spread = (expected_batch_size * (1.0 - sample_rate)) ** 0.5
    needed = max(1, math.ceil(expected_batch_size + deviations * spread))
    return multiple * math.ceil(needed / multiple)


def physical_batches(indices: torch.Tensor, capacity: int,
                     fill: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One logical (Poisson) batch of training indices as physical batches of exactly ``capacity``
    rows: ``(indices, mask)`` pairs, mask True on the sampled rows, the padding rows holding index
    ``fill`` (a real row, so that every value the model sees is finite; the engine masks it out).

    Every sampled index appears in exactly one physical batch: a batch larger than ``capacity`` is
    split into ceil(n / capacity) physical batches, the last one padded (see the module docstring:
    dropping the excess would break the sampled Gaussian mechanism's analysis). An empty batch is
    one physical batch of padding only, so that the step still adds its noise and the accountant
    still steps."""
    count = len(indices)
    pieces = max(1, -(-count // capacity))
    padded = torch.full((pieces * capacity,), fill, dtype=indices.dtype, device=indices.device)
    padded[:count] = indices
    mask = torch.zeros(pieces * capacity, dtype=torch.bool, device=indices.device)
    mask[:count] = True
    return [(padded[i * capacity:(i + 1) * capacity], mask[i * capacity:(i + 1) * capacity])
            for i in range(pieces)]


def unfold(a: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``F.unfold(a, ...)`` for ``conv``'s kernel, stride, padding and dilation: (B, in·kh·kw, L).

    One strided view (B, in, kh, kw, H', W') of the padded input, whose element (b, c, i, j, y, x)
    is the input under kernel position (i, j) at output position (y, x), copied once by the
    reshape into F.unfold's order (channel, then kernel row, then column). On the CPU this is many
    times faster than F.unfold (aten::im2col, three quarters of a CNN step in our profile) and than
    stacking the kh·kw shifted views (torch.stack of strided views, half of a ResNet step).
    """
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    if isinstance(conv.padding, str):
        raise ConfigError(f"privacy.engine 'fast' needs a convolution's padding as numbers, not "
                          f"{conv.padding!r} ({conv}). Use privacy.engine: opacus.")
    ph, pw = conv.padding
    padded = F.pad(a, (pw, pw, ph, ph)) if ph or pw else a
    batch, channels = padded.shape[:2]
    # Tensor.unfold's sliding windows (views, traceable by torch.compile, unlike as_strided with
    # the storage offset): (B, in, H', W', kernel extent, kernel extent), every dilation-th entry
    # of each window, then kernel offsets before positions.
    windows = padded.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)
    windows = windows[..., ::dh, ::dw].permute(0, 1, 4, 5, 2, 3)
    height, width = windows.shape[4:]
    return windows.reshape(batch, channels * kh * kw, height * width)


def input_gram(a: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Each example's AᵢᵀAᵢ (B, L, L) for ``conv``'s unfolded input Aᵢ, without unfolding.

    Entry (l, m) of AᵢᵀAᵢ is Σ over channels and kernel offsets (i, j) of the input under offset
    (i, j) at output position l times the one under (i, j) at m: the sum over the k·k offsets of
    the shifted, strided sub-blocks of the input's own Gram matrix aᵢᵀaᵢ over pixels (0 where the
    convolution reads padding). Its product costs in·(H·W)² per example against the unfolded form's
    in·k²·L², and no (in·k², L) copy of the input is made.
    """
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    ph, pw = conv.padding
    batch, channels, height, width = a.shape
    pixels = a.reshape(batch, channels, height * width)
    gram = (pixels.transpose(1, 2) @ pixels).view(batch, height, width, height, width)
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    # Offset (i, j) reads gram[y·sh + i·dh − ph, x·sw + j·dw − pw, (the same for y', x')] where
    # that is inside the input, and the padding's 0 elsewhere: so only the rectangle of output
    # positions whose input it reads gets its block, without padding the Gram (a padded 4×4 map's
    # Gram is five times the map's; padding it and summing nine strided blocks, or one strided
    # reduction, measured two to six times slower, issue 30).
    total = gram.new_zeros(batch, out_h, out_w, out_h, out_w)
    for i in range(kh):
        outputs, inputs = _inside(out_h, height, sh, i * dh - ph)
        if outputs is None:
            continue
        for j in range(kw):
            columns, input_columns = _inside(out_w, width, sw, j * dw - pw)
            if columns is None:
                continue
            total[:, outputs, columns, outputs, columns].add_(
                gram[:, inputs, input_columns, inputs, input_columns])
    return total.reshape(batch, out_h * out_w, out_h * out_w)


def _inside(outputs: int, size: int, stride: int, shift: int) -> tuple[slice | None, slice | None]:
    """The output positions y (of ``outputs``) whose input index y·stride + shift lies in [0,
    ``size``), and those input indices, as slices; (None, None) if there are none."""
    first = max(0, -(shift // stride))  # the least y with y·stride + shift ≥ 0
    last = min(outputs - 1, (size - 1 - shift) // stride)
    if last < first:
        return None, None
    start = first * stride + shift
    return slice(first, last + 1), slice(start, start + (last - first) * stride + 1, stride)


# What copying one value of an unfolded input costs, in multiply-adds of a product: measured
# inside ResNet-18 training steps on the CPU (issue 30), between 3.2 (below it the pixel Gram of a
# 4×4 map under a stride-2 3×3 layer would lose to the unfold; it is 4× faster) and 13 (above it
# an 8×8 map's Gram would win; it is 2.5× slower).
UNFOLD_COPY_COST = 8


def conv_route(conv: nn.Conv2d, input_shape, positions: int, device_type: str = "cpu") -> str:
    """How the engine clips ``conv`` on inputs of ``input_shape`` (B, in, H, W) with L =
    ``positions`` output positions: Bu et al. (2023)'s layer-wise choice, then the cheaper way to
    the ghost norm's input product. Deterministic in the shapes (never timed), so that a run's
    rounding does not depend on the machine's load.

    - ``per_example_cpu``: each example's gradient formed outright (about p·d per position),
      where the ghost norm's L×L products (about 2L² per position) cost more: early layers, large
      maps; on the CPU by the native loop (:mod:`privacy.native_kernels`), else as the weight
      gradient of one convolution with a group per example (:func:`cpu_weight_gradients`);
    - ``per_example``: the same off the CPU (and for padding given as a string, which
      :func:`unfold` refuses with the reason), as Δᵢ·unfold(aᵢ)ᵀ
      (:func:`unfolded_weight_gradients`);
    - ``ghost_gram``: the ghost norm with AᵢᵀAᵢ from the input's pixel Gram (:func:`input_gram`,
      in·(H·W)² + k²·L² per example), where that undercuts the unfolded input's in·k²·L² plus its
      copy (:data:`UNFOLD_COPY_COST`): stride 1 and small maps, and strided layers on the
      smallest maps;
    - ``ghost_unfold``: the ghost norm with AᵢᵀAᵢ from the unfolded input (strided layers, whose
      pixel Gram is four times the positions');
    - ``single_position``: one output position (a ResNet's last stage at 32 px): the layer is a
      Linear on the one window of input it reads (:func:`single_window`), each example's gradient
      δᵢ ⊗ windowᵢ on the kernel offsets that fall inside the input and 0 on those that read only
      padding; its norm ‖δᵢ‖·‖windowᵢ‖ and its clipped sum one product (:class:`_WindowOuter`),
      where the ghost form's weight gradient multiplied the padding's zeros too.
    """
    fan_in, out_channels = conv.weight[0].numel(), conv.weight.shape[0]  # d = in·k², p
    if positions == 1 and not isinstance(conv.padding, str):
        return "single_position"
    if isinstance(conv.padding, str) or not 2 * positions * positions < fan_in * out_channels:
        if device_type == "cpu" and not isinstance(conv.padding, str):
            return "per_example_cpu"
        return "per_example"
    pixels = input_shape[2] * input_shape[3]
    kernel = conv.kernel_size[0] * conv.kernel_size[1]
    gram = input_shape[1] * pixels * pixels + kernel * positions * positions
    # The unfolded input's product, plus its copy: a strided gather of d·L values, counted as
    # UNFOLD_COPY_COST multiply-adds each.
    unfolded = fan_in * positions * positions + UNFOLD_COPY_COST * fan_in * positions
    if gram < unfolded:
        return "ghost_gram"
    return "ghost_unfold"


def single_window(a: torch.Tensor, conv: nn.Conv2d) -> tuple[torch.Tensor, tuple[slice, slice]]:
    """The one window of input that ``conv`` reads where its output has a single position: (B,
    in, kh', kw') on the kernel offsets that fall inside the input, and those offsets (rows,
    columns of the kernel); the others read only padding, so their gradient is 0."""
    def inside(size: int, kernel: int, padding: int, dilation: int) -> tuple[slice, slice]:
        # Offset i reads input index i·dilation − padding at the one output position.
        taps = [i for i in range(kernel) if 0 <= i * dilation - padding < size]
        first, last = taps[0], taps[-1]
        start = first * dilation - padding
        return (slice(first, last + 1),
                slice(start, start + (last - first) * dilation + 1, dilation))
    rows, input_rows = inside(a.shape[2], conv.kernel_size[0], conv.padding[0], conv.dilation[0])
    columns, input_columns = inside(a.shape[3], conv.kernel_size[1], conv.padding[1],
                                    conv.dilation[1])
    return a[:, :, input_rows, input_columns], (rows, columns)


def grouped_weight_gradients(a: torch.Tensor, delta: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Each example's weight gradient (B, out, in, kh, kw) of ``conv`` (no groups of its own) as the
    weight gradient of one convolution with B groups: the batch laid out as channels, (1, B·in, H,
    W) and (1, B·out, H', W'), group b holding example b's input and output gradient, so that the
    weight gradient of group b is example b's own (the grouping Opacus' and Rochette et al.'s
    "Efficient Per-Example Gradient Computations in Convolutional Neural Networks", 2019, use for
    per-example convolution gradients). The CPU's route where the native loop
    (:mod:`privacy.native_kernels`) cannot be built, and in float64. This is oneDNN's
    backward-weights kernel, which
    reads the input and δ once: no unfolded copy of the input (600 MB for the 64-px CNN's second
    layer at batch 256) and no batch of small products; in a training step it was 1.2 to 3 times
    faster than :func:`unfold` and :func:`torch.bmm` on every per-example layer of the CNN and the
    ResNet, the 7×7 stride-2 stem included (issue 30; the native loop then beat it 1.05 to 4.6
    times, the stem most: 3.3 against 15 ms at batch 256). oneDNN builds a kernel for each batch size
    it has not seen (Poisson batches vary): measured 1 to 6 ms once per size and layer, then
    cached; calls of a seen size varied by under 2× (one or two threads)."""
    batch, channels = a.shape[:2]
    out_channels = delta.shape[1]
    grads = torch.nn.grad.conv2d_weight(
        a.reshape(1, batch * channels, *a.shape[2:]),
        (batch * out_channels, channels, *conv.kernel_size),
        delta.reshape(1, batch * out_channels, *delta.shape[2:]),
        stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=batch)
    return grads.view(batch, *conv.weight.shape)


def cpu_weight_gradients(a: torch.Tensor, delta: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Each example's weight gradient (B, out, in, kh, kw) of ``conv`` on the CPU: the native loop
    (:mod:`privacy.native_kernels`, 1.05 to 4.6 times faster at every shape measured, issue 30) in
    float32 where it built, else :func:`grouped_weight_gradients` (float64, or no C compiler).
    The two give the same gradients to float rounding."""
    grads = native_kernels.weight_gradients(a, delta, conv)
    return grads if grads is not None else grouped_weight_gradients(a, delta, conv)


def unfolded_weight_gradients(a: torch.Tensor, delta: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Each example's weight gradient (B, out, in, kh, kw) of ``conv`` as Δᵢ·unfold(aᵢ)ᵀ, one
    batched product (the route off the CPU)."""
    columns = unfold(a, conv)  # (B, d = in·k², L)
    d = delta.reshape(len(a), delta.shape[1], -1)  # (B, p = out, L)
    return torch.bmm(d, columns.transpose(1, 2)).reshape(len(a), *conv.weight.shape)


def group_norm_statistics(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The mean and 1/σ (B, groups) with which a GroupNorm normalized its input, as the forward
    pass saved them for its backward (``native_group_norm``'s results); None where autograd kept
    none (an output that needs no gradient, or another function in between)."""
    function = output.grad_fn
    if function is None or function.name() != "NativeGroupNormBackward0":
        return None
    return function._saved_result1.detach(), function._saved_result2.detach()


def group_norm_per_example(norm: nn.GroupNorm, a: torch.Tensor, delta: torch.Tensor,
                           stats: tuple[torch.Tensor, torch.Tensor] | None = None
                           ) -> dict[nn.Parameter, _Form]:
    """A GroupNorm's per-example gradients: Σ over space of δ·x̂ for its weight and of δ for its
    bias, per channel, with x̂ = (x − μ)/σ of the channel's group.

    Σ δ·x̂ = (Σ δ·x − μ·Σ δ)/σ: one pass of products over the input and δ and the sums of δ that the
    bias needs anyway, without forming x̂ (the normalized input, as large as the input: computing
    it again was a third of what the ResNet's 20 GroupNorms cost, issue 30). μ and 1/σ are the
    forward pass's own (``stats``, :func:`group_norm_statistics`), else computed again by the same
    kernel. Rounding: the subtraction μ·Σδ cancels where |μ| ≫ σ, so the gradient's rounding grows
    with |μ|/σ; the norm and the sum read the same values, so the clipping bound holds exactly."""
    batch, channels = a.shape[:2]
    groups = norm.num_groups
    if stats is None:
        _, mean, rstd = torch.native_group_norm(a, None, None, batch, channels,
                                                a[0, 0].numel(), groups, norm.eps)
    else:
        mean, rstd = stats
    d = delta.reshape(batch, channels, -1)
    delta_sums = d.sum(2)
    out: dict[nn.Parameter, _Form] = {}
    if norm.weight is not None:
        # Σ δ·x, (B, channels): as B·channels dot products where each row is 16 to 256 values
        # (2-3x faster there than vecdot's product and sum), else vecdot (faster on shorter rows,
        # and on longer ones, which no longer fit the cache: 140 against 180 ms at 64×64 px).
        if 16 <= d.shape[2] <= 256:
            products = torch.bmm(d.reshape(batch * channels, 1, -1),
                                 a.reshape(batch * channels, -1, 1)).view(batch, channels)
        else:
            products = torch.linalg.vecdot(d, a.reshape(d.shape))
        per_group = channels // groups
        mean = mean.reshape(batch, groups, 1)
        rstd = rstd.reshape(batch, groups, 1)
        grads = (products.view(batch, groups, per_group)
                 - mean * delta_sums.view(batch, groups, per_group)).mul_(rstd)
        out[norm.weight] = _PerExample(grads.view(batch, channels))
    if norm.bias is not None:
        out[norm.bias] = _PerExample(delta_sums)
    return out


class _Form:
    """One parameter's per-example gradients in the form cheapest to clip: each example's squared
    norm, and the clipped sum Σᵢ wᵢgᵢ, returned or added in place onto the parameter's slice of
    the step's flat buffer (which holds the noise already)."""

    def squared_norms(self) -> torch.Tensor | None:
        """‖gᵢ‖² of each example, (B,); None where another form of the layer counts it."""
        raise NotImplementedError

    def clipped_sum(self, weights: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def add_clipped_sum(self, out: torch.Tensor, weights: torch.Tensor) -> None:
        """``out`` (the parameter's flat slice) += Σᵢ wᵢgᵢ."""
        out.add_(self.clipped_sum(weights).reshape(-1))


class _Outer(_Form):
    """A Linear weight's per-example gradients δᵢaᵢᵀ, kept as their factors (never formed).

    Its squared norm counts the bias's too when the layer has one (:class:`_Rows` then counts
    nothing): ‖δᵢaᵢᵀ‖² + ‖δᵢ‖² = ‖δᵢ‖²·(‖aᵢ‖² + 1), two reductions and one fused multiply-add for
    the whole layer. On the MLP's small layers each operation's dispatch costs more than its
    arithmetic, so the count of operations is what this saves (issue 30)."""

    def __init__(self, delta: torch.Tensor, a: torch.Tensor, with_bias: bool):
        self.delta, self.a, self.with_bias = delta, a, with_bias

    def squared_norms(self) -> torch.Tensor:
        if self.delta.shape[1] == 1:  # one output (every model's last layer): δᵢ² itself
            delta_squares = self.delta.reshape(-1).square()
        else:
            delta_squares = torch.linalg.vector_norm(self.delta, dim=1).square_()
        a_squares = torch.linalg.vector_norm(self.a, dim=1).square_()
        if self.with_bias:
            return a_squares.mul_(delta_squares).add_(delta_squares)
        return a_squares.mul_(delta_squares)

    def _weighted_factors(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Σᵢ wᵢδᵢaᵢᵀ = (w ⊙ δ)ᵀa = δᵀ(w ⊙ a): weight the narrower factor (the smaller copy; the
        # step is bound by memory traffic on the CPU).
        if self.delta.shape[1] <= self.a.shape[1]:
            return self.delta * weights.unsqueeze(1), self.a
        return self.delta, self.a * weights.unsqueeze(1)

    def clipped_sum(self, weights: torch.Tensor) -> torch.Tensor:
        delta, a = self._weighted_factors(weights)
        return delta.T @ a

    def add_clipped_sum(self, out: torch.Tensor, weights: torch.Tensor) -> None:
        # One product accumulated onto the noise (no separate sum and addition).
        delta, a = self._weighted_factors(weights)
        out.view(self.delta.shape[1], self.a.shape[1]).addmm_(delta.T, a)


class _Rows(_Form):
    """A Linear bias's per-example gradients δᵢ; their norms are counted by the weight's
    :class:`_Outer`."""

    def __init__(self, delta: torch.Tensor):
        self.delta = delta

    def squared_norms(self) -> None:
        return None

    def clipped_sum(self, weights: torch.Tensor) -> torch.Tensor:
        return weights @ self.delta

    def add_clipped_sum(self, out: torch.Tensor, weights: torch.Tensor) -> None:
        out.addmv_(self.delta.T, weights)


class _WindowOuter(_Outer):
    """A single-position convolution's per-example weight gradients δᵢ ⊗ windowᵢ (:func:`single_window`),
    kept as their factors like a Linear layer's: the kernel offsets in ``taps`` get them, the
    others (reading only padding) 0."""

    def __init__(self, delta: torch.Tensor, window: torch.Tensor, taps: tuple[slice, slice],
                 weight_shape: torch.Size, with_bias: bool):
        super().__init__(delta, window.reshape(len(window), -1), with_bias)
        self.window_shape, self.taps, self.weight_shape = window.shape[1:], taps, weight_shape

    def clipped_sum(self, weights: torch.Tensor) -> torch.Tensor:
        full = self.delta.new_zeros(self.weight_shape)
        self.add_clipped_sum(full, weights)
        return full

    def add_clipped_sum(self, out: torch.Tensor, weights: torch.Tensor) -> None:
        delta, a = self._weighted_factors(weights)
        kernel = out.view(self.weight_shape)[:, :, self.taps[0], self.taps[1]]
        if kernel.is_contiguous():  # every offset reads the input: accumulate in the product
            kernel.view(len(kernel), -1).addmm_(delta.T, a)
        else:
            kernel.add_((delta.T @ a).view(kernel.shape))


class _PerExample(_Form):
    """Per-example gradients (B, ...) formed outright: biases, GroupNorm's affine parameters, and a
    convolution whose per-example gradient is smaller than its ghost norm's L×L products."""

    def __init__(self, grads: torch.Tensor):
        self.grads = grads

    def squared_norms(self) -> torch.Tensor:
        # One pass without a squared copy (a convolution's per-example gradients are the largest
        # tensor of the step): a quarter faster than pow(2).sum(1) on the CNN's second layer.
        return torch.linalg.vector_norm(self.grads.reshape(len(self.grads), -1), dim=1).square()

    def clipped_sum(self, weights: torch.Tensor) -> torch.Tensor:
        return torch.tensordot(weights, self.grads, dims=1)

    def add_clipped_sum(self, out: torch.Tensor, weights: torch.Tensor) -> None:
        out.addmv_(self.grads.reshape(len(self.grads), -1).T, weights)


def _total_squares(grads: dict[nn.Parameter, _Form]) -> torch.Tensor:
    """Each example's squared norm over all the forms' parameters, (B,)."""
    squares = [s for s in (g.squared_norms() for g in grads.values()) if s is not None]
    if len(squares) <= 3:  # an MLP's few layers: added in place, fewer operations than a stack
        total = squares[0].clone() if len(squares) == 1 else squares[0] + squares[1]
        for more in squares[2:]:
            total.add_(more)
        return total
    return torch.stack(squares).sum(0)


class _ConvGhost(_Form):
    """A convolution's per-example gradient norms by ghost clipping (Goodfellow 2015; Li et al.,
    ICLR 2022): with the unfolded input Aᵢ (d, L) and output gradient Δᵢ (p, L), ‖ΔᵢAᵢᵀ‖² is the
    sum of (AᵢᵀAᵢ) ⊙ (ΔᵢᵀΔᵢ), two L×L products; the clipped sum is the convolution's ordinary
    weight gradient of the reweighted output gradients cᵢΔᵢ."""

    def __init__(self, module: nn.Conv2d, a: torch.Tensor, delta: torch.Tensor,
                 inputs: torch.Tensor):
        """``inputs``: each example's AᵢᵀAᵢ (B, L, L), from :func:`input_gram` or the unfolded
        input."""
        self.module, self.a, self.delta = module, a, delta
        flat = delta.reshape(len(delta), delta.shape[1], -1)
        self.squares = (inputs * (flat.transpose(1, 2) @ flat)).sum((1, 2))

    def squared_norms(self) -> torch.Tensor:
        return self.squares

    def clipped_sum(self, factors: torch.Tensor) -> torch.Tensor:
        m = self.module
        return torch.nn.grad.conv2d_weight(self.a, m.weight.shape,
                                           self.delta * factors.view(-1, 1, 1, 1),
                                           stride=m.stride, padding=m.padding,
                                           dilation=m.dilation, groups=m.groups)


# The elementwise activations a chain of Linear layers may hold (:func:`linear_chains`), each with
# the backward that autograd itself runs for it, from the activation's output (the next layer's
# input): ReLU's passes δ where the output is positive, tanh's multiplies by 1 − output². Applied by
# hand, they give a chain's δ bit for bit as autograd would.
ACTIVATION_BACKWARD = {  # (grad, output) -> δ, written over grad (a temporary of the engine's)
    nn.ReLU: lambda grad, output: torch.ops.aten.threshold_backward.grad_input(
        grad, output, 0, grad_input=grad),
    nn.Tanh: lambda grad, output: torch.ops.aten.tanh_backward.grad_input(
        grad, output, grad_input=grad),
}


def linear_chains(model: nn.Module) -> list[list[nn.Module]]:
    """Runs of two or more Linear layers with trainable weights in one :class:`torch.nn.Sequential`,
    each followed directly by the next or by one activation of :data:`ACTIVATION_BACKWARD` (the
    MLP's ``net``): each run's modules from its first Linear to its last, activations included.
    Inside a Sequential each module's output feeds the next module only, so the δ of every layer of
    a run follows from the last one's by hand (:meth:`_Recorder.backpropagate`)."""
    chains = []
    for container in model.modules():
        if not isinstance(container, nn.Sequential):
            continue
        span: list[nn.Module] = []
        for child in container:
            if isinstance(child, nn.Linear) and child.weight.requires_grad:
                span.append(child)
                continue
            if span and isinstance(span[-1], nn.Linear) and type(child) in ACTIVATION_BACKWARD:
                span.append(child)
                continue
            chains.append(span)
            span = []
        chains.append(span)
    chains = [span[:max(i for i, m in enumerate(span) if isinstance(m, nn.Linear)) + 1]
              for span in chains if sum(isinstance(m, nn.Linear) for m in span) > 1]
    return chains


def _observed(span: list[nn.Module], own_hooks: set[int]) -> bool:
    """Whether anything besides the engine's own recorders hooks a module of a chain's ``span``
    (its Linear layers and the activations between), or every module (global hooks). A chain is
    back-propagated by hand only when nothing else sees or changes its inner tensors: a repair
    method's loss on hidden activations (RUNNER's neurons, recorded by forward hooks on the
    activations), a pre-hook that changes a layer's input (dropout), or a backward hook would
    otherwise be bypassed, and the δ by hand would be wrong."""
    if (torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks
            or torch_module._global_backward_hooks or torch_module._global_backward_pre_hooks):
        return True
    for module in span:
        if (module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
                or any(key not in own_hooks for key in module._forward_hooks)):
            return True
    return False


class _Recorder:
    """What one supported layer leaves behind in a training step: its input a (forward hook) and
    the gradient δ of the loss with respect to its output (a hook on the output tensor).

    The engine keeps the model's parameters out of autograd while it trains (``requires_grad``
    off): their gradients would only be the unclipped sums that the engine computes again,
    clipped, from a and δ. A layer whose input needs no gradient (the first one) therefore has an
    output that needs none either; its output becomes the leaf where the backward pass ends.

    A chain of Linear layers (:func:`linear_chains`) whose first input needs no gradient (an MLP on
    the data) is cut shorter still: only its last layer's output becomes a leaf, so autograd runs
    the loss's backward alone, and each earlier layer's δ is the next one's times the next weight,
    through the activation's backward (:meth:`backpropagate`): the same kernels autograd would run,
    without its graph, its nodes and a hook per layer. On an MLP's small layers that overhead was
    most of what DP-SGD added to a step (issue 30). Decided at each forward pass by the chain's
    head: only while nothing else hooks the chain's modules (:func:`_observed`); otherwise every
    layer records as above and autograd carries whatever else reads the inner tensors.
    """

    def __init__(self, engine: FastEngine, module: nn.Module):
        self.engine, self.module = engine, module
        self.input: torch.Tensor | None = None
        self.grad_output: torch.Tensor | None = None
        # A GroupNorm's mean and 1/σ from its forward pass (group_norm_statistics).
        self.stats: tuple[torch.Tensor, torch.Tensor] | None = None
        self.handle = module.register_forward_hook(self.forward)
        # In a chain: its first layer's recorder, and the next Linear's with the backward of the
        # activation between (None: none between). by_hand: set on the head at each forward pass.
        self.head: _Recorder | None = None
        self.successor: tuple[_Recorder, Any] | None = None
        self.by_hand = False
        # Head only: the chain's modules (Linear layers and activations between) and the ids of
        # the engine's own hooks on them, for _observed.
        self.span: list[nn.Module] = []
        self.own_hooks: set[int] = set()

    def forward(self, module, inputs, output):
        if not (self.engine.hooks_enabled and module.training and torch.is_grad_enabled()):
            return None
        self.input = inputs[0].detach()
        if isinstance(module, nn.GroupNorm):
            self.stats = group_norm_statistics(output)
        if self.head is self:
            self.by_hand = (not inputs[0].requires_grad
                            and not _observed(self.span, self.own_hooks))
        if self.successor is not None and self.head.by_hand:
            return None  # δ from the successor's, by hand (backpropagate)
        if not output.requires_grad:
            output = output.detach().requires_grad_(True)
        output.register_hook(self.store)
        return output

    def store(self, grad: torch.Tensor) -> None:
        self.grad_output = grad.detach()

    def backpropagate(self) -> None:
        """This chain layer's δ from its successor's: δ·W back through the next Linear (autograd's
        ``grad.mm(weight)`` of a 2-D input), then the activation's backward at its output, which is
        the next layer's recorded input. Under bf16 autocast in δ's precision, as autograd's."""
        following, activation_backward = self.successor
        delta = following.grad_output
        weight = following.module.weight
        if weight.dtype != delta.dtype:
            weight = weight.to(delta.dtype)
        if delta.shape[-1] == 1:  # an outer product: one multiplication per entry, as mm's
            delta = delta * weight
        else:
            delta = delta.mm(weight) if delta.ndim == 2 else delta.matmul(weight)
        if activation_backward is not None:
            delta = activation_backward(delta, following.input)
        self.grad_output = delta

    def clear(self) -> None:
        self.input = self.grad_output = self.stats = None

    def per_example(self, a: torch.Tensor | None = None,
                    delta: torch.Tensor | None = None) -> dict[nn.Parameter, Any]:
        """Each parameter's per-example gradient, in the form that is cheapest to clip, up to the
        common factor n of a mean loss (the engine scales norms and weights by it instead, which
        saves a pass over every δ). ``a`` and ``delta`` default to the recorded ones (given, for a
        compiled function whose inputs they are)."""
        module = self.module
        recorded = a is None
        a = self.input if a is None else a
        delta = self.grad_output if delta is None else delta
        # Under bf16 autocast: norms, factors and clipped sums in fp32 (module docstring).
        if a.dtype in LOW_PRECISION:
            a = a.float()
        if delta.dtype in LOW_PRECISION:
            delta = delta.float()
        out: dict[nn.Parameter, Any] = {}
        if isinstance(module, nn.Linear):
            if a.ndim == 2:
                out[module.weight] = _Outer(delta, a, with_bias=module.bias is not None)
                if module.bias is not None:
                    out[module.bias] = _Rows(delta)
            else:  # (B, ..., in): sum over the middle axes per example
                a3, d3 = a.reshape(len(a), -1, a.shape[-1]), delta.reshape(len(a), -1,
                                                                            delta.shape[-1])
                out[module.weight] = _PerExample(torch.einsum("bto,bti->boi", d3, a3))
                if module.bias is not None:
                    out[module.bias] = _PerExample(d3.sum(1))
        elif isinstance(module, nn.Conv2d):
            if module.groups != 1:
                raise ConfigError(f"privacy.engine 'fast' does not support grouped convolutions "
                                  f"({module}). Use privacy.engine: opacus.")
            if module.padding_mode != "zeros":  # every route reads the padding as zeros
                raise ConfigError(f"privacy.engine 'fast' supports convolutions padded with "
                                  f"zeros only, not {module.padding_mode!r} ({module}). Use "
                                  f"privacy.engine: opacus.")
            d = delta.reshape(len(a), delta.shape[1], -1)  # (B, p = out, L)
            route = conv_route(module, a.shape, d.shape[2], a.device.type)
            if route == "single_position":
                window, taps = single_window(a, module)
                out[module.weight] = _WindowOuter(d[:, :, 0], window, taps, module.weight.shape,
                                                  with_bias=module.bias is not None)
                if module.bias is not None:
                    out[module.bias] = _Rows(d[:, :, 0])
                return out
            if route == "per_example_cpu":
                out[module.weight] = _PerExample(cpu_weight_gradients(a, delta, module))
            elif route == "per_example":
                out[module.weight] = _PerExample(unfolded_weight_gradients(a, delta, module))
            else:
                if route == "ghost_gram":
                    inputs = input_gram(a, module)
                else:
                    columns = unfold(a, module)
                    inputs = columns.transpose(1, 2) @ columns
                out[module.weight] = _ConvGhost(module, a, delta, inputs)
            if module.bias is not None:
                out[module.bias] = _PerExample(d.sum(2))
        else:  # GroupNorm: per channel, Σ over space of δ·x̂ (weight) and of δ (bias)
            out.update(group_norm_per_example(module, a, delta,
                                              self.stats if recorded else None))
        return out


class FastEngine:
    """The model's hooks, the clipping and noising of each step, and the accountant."""

    def __init__(self, model: nn.Module, *, max_grad_norm: float, noise_multiplier: float,
                 sample_rate: float, expected_batch_size: float, accountant: str,
                 noise_generator: torch.Generator | None, secure: SecureRandom | None,
                 rule: ClippingRule | None = None):
        self.model, self.max_grad_norm = model, max_grad_norm
        self.noise_multiplier, self.sample_rate = float(noise_multiplier), sample_rate
        # The clipping rule (flat unless privacy.clipping says otherwise), and the noise multiplier
        # the accountant records per step: σ, or σ_eff of the sum and the rule's releases.
        self.rule = rule if rule is not None else Flat(
            None, max_grad_norm=max_grad_norm, expected_batch_size=expected_batch_size)
        self.accounted_noise_multiplier = self.rule.accounted_noise_multiplier(self.noise_multiplier)
        self._groups: torch.Tensor | None = None  # the batch's group flags (batch_groups)
        self._step: ClipStep | None = None  # this step's clipping, once computed
        self.last_step: ClipStep | None = None  # the last privatized step's, for diagnostics
        self.expected_batch_size = expected_batch_size
        self.accountant = create_accountant(mechanism=accountant)
        self.noise_generator, self.secure = noise_generator, secure
        self.hooks_enabled = True
        self.recorders = []
        for module in model.modules():
            own = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            if not isinstance(module, SUPPORTED):
                raise ConfigError(f"privacy.engine 'fast' cannot clip the trainable layer "
                                  f"{type(module).__name__}: it supports "
                                  f"{', '.join(t.__name__ for t in SUPPORTED)}. Use "
                                  f"privacy.engine: opacus for this model.")
            self.recorders.append(_Recorder(self, module))
        self.chains = self._link_chains(model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # Each parameter's slice (start, end) of a step's flat buffer: its noise, then its sum.
        self._pieces, start = [], 0
        for p in self.params:
            self._pieces.append((p, start, start + p.numel()))
            start += p.numel()
        self._flat_size = start
        self._current: tuple | None = None
        # Static shapes (use_static_shapes): the physical batch's size, the sampled rows of the
        # batch being forwarded (set_padding), and the step's running sum (noise first).
        self.capacity: int | None = None
        self._mask: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None
        self._clip_physical = self._clipped_physical_sum
        # Whether the records are of a summed loss (record_pass), not the mean's.
        self._summed = False
        self.track_parameters(False)

    def use_static_shapes(self, capacity: int | None = None, compiled: bool = False) -> None:
        """Train on padded physical batches of ``capacity`` rows (module docstring; None: the
        default, :func:`physical_capacity`); ``compiled``: the clipping of each physical batch
        (norms, factors, clipped sums: fixed shapes now) runs through ``torch.compile``. Flat
        clipping only."""
        if not isinstance(self.rule, Flat):
            raise ConfigError(PADDING_NEEDS_FLAT.format(rule=self.rule.name))
        self.capacity = int(capacity if capacity is not None
                            else physical_capacity(self.expected_batch_size, self.sample_rate))
        if compiled:
            self._clip_physical = torch.compile(self._clipped_physical_sum)

    def set_padding(self, mask: torch.Tensor) -> None:
        """The sampled rows (True) of the physical batch about to be forwarded; its loss must be
        :meth:`padded_loss`. Dropped when the batch is accumulated."""
        self._mask = mask

    def padded_loss(self, per_example: torch.Tensor) -> torch.Tensor:
        """The loss of a padded physical batch: the sum of the sampled rows' losses. ``where``,
        not a product with the mask, so that a padding row's loss never enters the value, and its
        gradient (hence its δ at every layer) is exactly 0. A sum, not a mean: each example's δ is
        then its own gradient's (the engine's scale is 1), and the divisor needs no per-step value
        that a compiled step would specialize on."""
        return torch.where(self._mask, per_example, 0.0).sum()

    def _clipped_physical_sum(self, inputs: list[torch.Tensor], deltas: list[torch.Tensor],
                              mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flat clipping of one padded physical batch from its records: every parameter's clipped
        sum, flat in the parameters' order; each row's norm and factor (0 and 1 on padding rows).
        Padding rows get weight 0 besides their δ of 0 (belt and braces: a padding row can never
        add anything, whatever its values)."""
        grads: dict[nn.Parameter, Any] = {}
        for recorder, a, delta in zip(self.recorders, inputs, deltas):
            grads.update(recorder.per_example(a, delta))
        norms = torch.where(mask, _total_squares(grads).sqrt(), 0.0)
        factors = self.rule.clip(norms).factors
        weights = torch.where(mask, factors, 0.0)
        sums = torch.zeros(self._flat_size, device=mask.device, dtype=self.params[0].dtype)
        self._add_clipped_sums(sums, grads, weights)
        return sums, norms, factors

    def _add_clipped_sums(self, flat: torch.Tensor, grads: dict[nn.Parameter, _Form],
                          weights: torch.Tensor) -> None:
        """Each parameter's clipped sum Σᵢ wᵢgᵢ added onto its slice of ``flat``, a step's flat
        buffer in the parameters' order."""
        for p, start, end in self._pieces:
            if p in grads:
                grads[p].add_clipped_sum(flat[start:end], weights)

    def _hand_out(self, flat: torch.Tensor) -> None:
        """``flat`` (noise plus clipped sums) divided by qN as every parameter's gradient: views of
        it, no per-parameter allocation."""
        flat.div_(self.expected_batch_size)
        for p, start, end in self._pieces:
            p.grad = flat[start:end].view_as(p)

    def accumulate(self) -> torch.Tensor:
        """Clip the padded physical batch just back-propagated and add its clipped sum to the
        step's running sum, which starts as the step's noise (one draw per logical step, whatever
        the number of physical batches). Returns each row's gradient norm (0 on padding rows)."""
        mask = self._mask
        if mask is None:
            raise RuntimeError("accumulate() follows set_padding(mask) and the padded loss's backward")
        self._backpropagate_chains()
        if any(r.input is None or r.grad_output is None for r in self.recorders):
            raise RuntimeError("a layer of the model recorded nothing in this physical batch")
        flat, norms, factors = self._clip_physical([r.input for r in self.recorders],
                                                   [r.grad_output for r in self.recorders], mask)
        if self._sum is None:
            self._sum = self.draw_noise()
        self._sum.add_(flat)
        self.last_step = ClipStep(factors, self.max_grad_norm,
                                  (self.max_grad_norm, self.max_grad_norm))
        for recorder in self.recorders:
            recorder.clear()
        self._mask, self._current, self._step = None, None, None
        return norms

    def _link_chains(self, model: nn.Module) -> list[list[_Recorder]]:
        """The recorders of each chain of Linear layers (:func:`linear_chains`), linked: each knows
        its chain's head and the next layer with the activation's backward between."""
        by_module = {recorder.module: recorder for recorder in self.recorders}
        chains = []
        for span in linear_chains(model):
            recorders = [by_module[m] for m in span if isinstance(m, nn.Linear)]
            for recorder, following in zip(recorders, recorders[1:]):
                between = span[span.index(following.module) - 1]  # activation, or the Linear
                recorder.successor = (following, ACTIVATION_BACKWARD.get(type(between)))
            for recorder in recorders:
                recorder.head = recorders[0]
            recorders[0].span = span
            recorders[0].own_hooks = {recorder.handle.id for recorder in recorders}
            chains.append(recorders)
        return chains

    def record_pass(self, inputs: list[torch.Tensor], deltas: list[torch.Tensor]) -> None:
        """Records of a pass written out by the trainer, in place of a forward and a backward pass
        through the hooks: each supported layer's input and δ of the batch's *summed* loss, in the
        order of :attr:`recorders` (the model's modules). The step then clips, noises and accounts
        (:meth:`privatize`) exactly as after ``loss.backward()``.

        Soundness does not rest on the caller's arithmetic: example i's contribution to the sum is
        cᵢ times the gradient formed from row i of every record, and cᵢ is computed from the norm
        of that same gradient, so it is at most C whatever the rows hold, provided row i depends
        on example i alone (true of a pass with no operation across examples, as an MLP's; the
        caller's rows must not mix examples). That the rows are the true per-example gradients
        is a matter of correctness, tested against autograd and a per-example loop
        (tests/test_mlp_pass.py). Unpadded steps only."""
        if self.capacity is not None:
            raise RuntimeError("record_pass is for unpadded steps (set_padding and accumulate "
                               "take padded physical batches)")
        if len(inputs) != len(self.recorders) or len(deltas) != len(self.recorders):
            raise ValueError(f"record_pass takes one input and one δ for each of the "
                             f"{len(self.recorders)} recorded layers")
        for recorder, a, delta in zip(self.recorders, inputs, deltas):
            recorder.input, recorder.grad_output = a, delta
        self._current, self._summed = None, True

    def hooked_by_others(self) -> bool:
        """Whether anything besides the engine's own recorders hooks a module of the model (or
        every module): what a pass written out by the trainer (:meth:`record_pass`) would bypass."""
        own = {recorder.handle.id for recorder in self.recorders}
        return _observed(list(self.model.modules()), own)

    def _backpropagate_chains(self) -> None:
        """Each chain's δ, last layer to first, where this pass left them to the engine."""
        for chain in self.chains:
            if chain[0].by_hand and chain[-1].grad_output is not None:
                for recorder in reversed(chain[:-1]):
                    if recorder.grad_output is None:
                        recorder.backpropagate()

    def track_parameters(self, tracked: bool) -> None:
        """Whether autograd computes the parameters' own gradients: off while the engine trains
        (see :class:`_Recorder`), on while a repair method differentiates on public data."""
        for p in self.params:
            p.requires_grad_(tracked)

    def _per_example(self) -> tuple[dict[nn.Parameter, Any], torch.Tensor, int]:
        """This backward pass's per-example gradients (or their factors), each example's norm and
        the batch size; computed once per step."""
        if self._current is None:
            self._backpropagate_chains()
            batch = next((len(r.input) for r in self.recorders if r.input is not None), 0)
            grads: dict[nn.Parameter, Any] = {}
            if batch > 0:
                for recorder in self.recorders:
                    if recorder.input is not None and recorder.grad_output is not None:
                        grads.update(recorder.per_example())
            device = self.params[0].device
            # The forms hold the gradients of the mean loss; each example's own gradient is n
            # times its share, so its norm is n times the forms' and its weight in the sum cᵢ·n.
            # A padded batch's loss is a sum (padded_loss), and so are record_pass's records:
            # scale 1 (padding rows' norms 0).
            scale = 1 if self._summed or self._mask is not None else batch
            if grads:
                norms = _total_squares(grads).sqrt().mul_(scale)
            else:
                norms = torch.zeros(batch, device=device)
            if self._mask is not None:
                norms = torch.where(self._mask, norms, 0.0)
            self._current = (grads, norms, scale)
        return self._current

    def batch_groups(self, minority: torch.Tensor) -> None:
        """The group flags of the batch about to be forwarded (True: minority), for a rule that
        clips by group (DPSGD-F); dropped after the step."""
        self._groups = minority

    def clip_step(self) -> ClipStep:
        """This step's clipping: the rule's factors, sensitivity and bounds from the last backward
        pass's norms (and groups). Computed once per step (the rule draws its releases and moves
        on when it is), shared by the diagnostics and :meth:`privatize`."""
        if self._step is None:
            _, norms, _ = self._per_example()
            self._step = self.rule.clip(norms, self._groups if self.rule.uses_groups else None)
        return self._step

    def per_example_norms(self) -> torch.Tensor:
        """Each sampled example's whole gradient norm before clipping, of the last backward."""
        return self._per_example()[1]

    def discard(self) -> None:
        """Forget the last backward pass's records without a step (the optimizer's zero_grad): a
        diagnostic pass, such as :mod:`privacy.individual`'s whole-set norms, must not train."""
        for recorder in self.recorders:
            recorder.clear()
        self._current = self._step = self._groups = None
        self._mask = self._sum = None
        self._summed = False

    def draw_noise(self, sensitivity: float | None = None) -> torch.Tensor:
        """One step's noise N(0, σ²S²) for every parameter, one flat draw in the parameters' order
        (from the ``dp_noise`` generator, or the OS under ``secure_rng``); S is the step's
        sensitivity, C (flat clipping) unless given."""
        device, dtype = self.params[0].device, self.params[0].dtype
        std = self.noise_multiplier * (self.max_grad_norm if sensitivity is None else sensitivity)
        total = self._flat_size
        if self.secure is not None:
            return self.secure.gaussian((total,), std, device=device, dtype=dtype)
        if std > 0:
            return torch.normal(0.0, std, size=(total,), generator=self.noise_generator,
                                device=device, dtype=dtype)
        return torch.zeros(total, device=device, dtype=dtype)

    def privatize(self) -> None:
        """Replace every parameter's ``grad`` by (Σ clipped per-example gradients + noise) / qN,
        and record the step with the accountant."""
        if self.capacity is not None and (self._mask is not None or self._sum is not None):
            self._privatize_padded()
            return
        grads, _, batch = self._per_example()
        step = self.clip_step()
        weights = step.factors * batch  # cᵢ·n, see _per_example
        # One flat buffer: the step's noise, each parameter's clipped sum added in place on its
        # slice (a Linear weight's accumulated by its product itself), one division for all; the
        # gradients are views of it (no per-parameter allocations).
        flat = self.draw_noise(step.sensitivity)
        self._add_clipped_sums(flat, grads, weights)
        self._hand_out(flat)
        for recorder in self.recorders:
            recorder.clear()
        self.last_step = step
        self._current = self._step = self._groups = None
        self._summed = False
        self.accountant.step(noise_multiplier=self.accounted_noise_multiplier,
                             sample_rate=self.sample_rate)

    def _privatize_padded(self) -> None:
        """:meth:`privatize` of a padded step: its physical batches' running sum (the last one
        accumulated here if the trainer has not), divided by qN, as every parameter's gradient."""
        if self._mask is not None:
            self.accumulate()
        self._hand_out(self._sum)
        self._sum = self._groups = None
        self.accountant.step(noise_multiplier=self.accounted_noise_multiplier,
                             sample_rate=self.sample_rate)


class FastDPOptimizer:
    """The trainer's optimizer with each step privatized first (the trainer's interface: zero_grad,
    step, state_dict, load_state_dict, param_groups)."""

    def __init__(self, optimizer: torch.optim.Optimizer, engine: FastEngine):
        self.original, self.engine = optimizer, engine

    @property
    def param_groups(self):
        return self.original.param_groups

    @property
    def noise_multiplier(self) -> float:
        return self.engine.noise_multiplier

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.engine.discard()  # as Opacus' zero_grad drops the per-example gradients
        self.original.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.engine.privatize()
        self.original.step()

    def state_dict(self) -> dict[str, Any]:
        return self.original.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.original.load_state_dict(state)


class FastPrivateTraining(AccountedSteps):
    """What :func:`make_private` hands back: a :class:`privacy.engine.PrivateEngine`, as
    :class:`privacy.dpsgd.PrivateTraining` is (the trainer reads nothing else); ε and its parts
    from :class:`privacy.engine.Accounted`."""

    def __init__(self, engine: FastEngine, optimizer: FastDPOptimizer, loader: PoissonIndexLoader,
                 releases: list[Release]):
        self.module, self.optimizer, self.index_loader = engine.model, optimizer, loader
        self.fast, self.releases = engine, releases
        self.sample_rate = engine.sample_rate
        self.noise_generator = engine.noise_generator

    @property
    def accountant(self):
        return self.fast.accountant

    @property
    def noise_multiplier(self) -> float:
        return self.fast.noise_multiplier

    @property
    def accounted_noise_multiplier(self) -> float:
        return self.fast.accounted_noise_multiplier

    @property
    def max_grad_norm(self) -> float:
        return self.fast.max_grad_norm

    @property
    def expected_batch_size(self) -> float:
        return self.fast.expected_batch_size

    @property
    def clipping(self) -> ClippingRule:
        """The clipping rule (``privacy.clipping``); its state goes into checkpoints."""
        return self.fast.rule

    @property
    def step_releases(self) -> list:
        """The clipping rule's per-step releases (:class:`privacy.clipping.StepRelease`)."""
        return self.fast.rule.step_releases()

    def draw_noise(self) -> torch.Tensor:
        """One step's noise at the flat bound C (:meth:`FastEngine.draw_noise`): the draw a step
        of this run makes, for a trainer that forms the clipped sums itself (the stacked one)."""
        return self.fast.draw_noise()

    def per_example_norms(self) -> torch.Tensor:
        return self.fast.per_example_norms()

    def record_pass(self, inputs: list[torch.Tensor], deltas: list[torch.Tensor]) -> None:
        """A pass written out by the trainer (:meth:`FastEngine.record_pass`)."""
        self.fast.record_pass(inputs, deltas)

    def hooked_by_others(self) -> bool:
        return self.fast.hooked_by_others()

    def per_example_conv_kernel(self) -> str | None:
        """Which kernel forms this model's per-example convolution gradients (:func:`conv_route`'s
        ``per_example_cpu``): the native loop or oneDNN's grouped kernel (their rounding differs),
        for the run's records; None off the CPU or for a model without convolutions."""
        convolutions = any(isinstance(r.module, nn.Conv2d) for r in self.fast.recorders)
        if not convolutions or self.fast.params[0].device.type != "cpu":
            return None
        return native_kernels.status()

    def batch_groups(self, minority: torch.Tensor) -> None:
        """The group flags (True: minority) of the batch about to be forwarded."""
        self.fast.batch_groups(minority)

    def clip_step(self) -> ClipStep:
        """This step's clipping (:meth:`FastEngine.clip_step`)."""
        return self.fast.clip_step()

    @property
    def last_clip_step(self) -> ClipStep | None:
        """The last privatized step's clipping."""
        return self.fast.last_step

    def use_static_shapes(self, capacity: int | None = None, compiled: bool = False) -> None:
        """Padded physical batches of ``capacity`` rows (:meth:`FastEngine.use_static_shapes`)."""
        self.fast.use_static_shapes(capacity, compiled)

    @property
    def capacity(self) -> int | None:
        """The physical batch size under padding, else None."""
        return self.fast.capacity

    def physical_batches(self, indices: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A logical batch's physical batches, ``(indices, mask)`` (:func:`physical_batches`)."""
        return physical_batches(indices, self.fast.capacity)

    def set_padding(self, mask: torch.Tensor) -> None:
        self.fast.set_padding(mask)

    def padded_loss(self, per_example: torch.Tensor) -> torch.Tensor:
        return self.fast.padded_loss(per_example)

    def accumulate(self) -> torch.Tensor:
        """Clip and add the physical batch just back-propagated; its rows' norms (padding 0)."""
        return self.fast.accumulate()

    @contextlib.contextmanager
    def hooks_off(self):
        """No recording while a repair method computes on public data."""
        self.fast.hooks_enabled = False
        self.fast.track_parameters(True)
        try:
            yield
        finally:
            self.fast.track_parameters(False)
            self.fast.hooks_enabled = True


def make_private(model: nn.Module, optimizer: torch.optim.Optimizer, loader, config, epochs: int,
                 noise_generator: torch.Generator | None = None,
                 releases: list[Release] = (),
                 clipping_generator: torch.Generator | None = None) -> FastPrivateTraining:
    """The fast engine for ``model`` (same arguments and meaning as
    :func:`privacy.dpsgd.make_private`), clipping by ``config.clipping``; a rule with releases draws
    them from ``clipping_generator`` (the run's ``dp_clipping`` stream, on the CPU) unless
    ``secure_rng``. With ``poisson_sampling: false`` it trains on the plain loader's shuffled
    fixed-size batches, as Opacus does, and the trainer marks ε as no guarantee."""
    secure = SecureRandom() if config.secure_rng else None
    if secure is None and noise_generator is None:
        raise ValueError("a reproducible DP-SGD run needs its own noise generator")
    # Opacus' q: one step per batch of one pass of the plain loader; an epoch is len(loader)
    # steps (one pass, or training.steps_per_epoch), each a Poisson sample at that q.
    steps_per_epoch = len(loader)
    sample_rate = 1.0 / loader.batches_per_pass
    num_examples = len(loader.dataset)
    expected_batch_size = int(num_examples * sample_rate)
    rule = build_rule(config, expected_batch_size=expected_batch_size,
                      source=secure if secure is not None else clipping_generator)
    if rule.step_releases() and secure is None and clipping_generator is None:
        raise ValueError(f"privacy.clipping {rule.name!r} releases counts: a reproducible run "
                         f"needs its own clipping generator")
    releases = list(releases)
    sigma = resolve_noise_multiplier(
        noise_multiplier=config.noise_multiplier, target_epsilon=config.target_epsilon,
        delta=config.delta, sample_rate=sample_rate, steps=epochs * steps_per_epoch,
        accountant=config.accountant, releases=[release.history() for release in releases],
        step_releases=[release.noise_multiplier for release in rule.step_releases()],
        release_keys=["privacy.counts_noise_multiplier", *(r.key for r in rule.step_releases())])
    engine = FastEngine(model, max_grad_norm=config.max_grad_norm, noise_multiplier=sigma,
                        sample_rate=sample_rate, expected_batch_size=expected_batch_size,
                        accountant=config.accountant, noise_generator=noise_generator,
                        secure=secure, rule=rule)
    if config.poisson_sampling:
        index_loader = PoissonIndexLoader(num_examples, sample_rate, steps_per_epoch,
                                          loader.generator, secure)
    else:  # shuffled fixed-size batches, as Opacus trains them; the run marks its ε as no guarantee
        index_loader = loader
    return FastPrivateTraining(engine, FastDPOptimizer(optimizer, engine), index_loader, releases)
