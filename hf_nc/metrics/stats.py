"""NCStats: a streaming, mergeable, all-reducible accumulator of NC sufficient statistics."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from . import formulas
from .distributed import all_reduce_sum_, default_device, is_distributed
from .validation import (
    as_classifier_weight,
    as_features,
    as_labels,
    check_nonempty,
    check_within_class,
    check_num_classes,
)

# slots of the device-side error flags: the index of the first bad call of each kind (-1:
# none), then the smallest and largest label of the first batch with labels out of range
_NONFINITE, _OVERFLOW, _LABELS, _LO, _HI = range(5)

#: NC1 treats a class-mean direction whose spread is below ``INPUT_ROUNDINGS * eps * rms|x|`` (eps of
#: the features' dtype) as rounding of the features: one rounding moves a feature vector by at most
#: eps/2 |x| along any direction, and a LayerNorm's float32 output holds ~eps/4 in its null direction
INPUT_ROUNDINGS = 2


#: the last update before which the class shifts are re-centred (see ``_recenter_due``)
RECENTER_UNTIL = 32


def _recenter_due(i: int) -> bool:
    """Before the i-th (0-based) non-empty update: re-centre every class on its running mean.

    Updates 1, 2, 4, 8, 16, 32: a tiny or unrepresentative first batch only shapes the shifts
    of a few batches, at most 6 re-centrings (each one (d, K) x (K, d) product, about the
    cost of a K-sample batch). In float32 statistics a class absent from the first batch takes the
    class mean of the batch it first appears in as its shift (``_shift_new_classes``), so its
    deviations are within-class sized from its first sample on, also after update 32 (float64
    keeps such a class to ~1e-10 relative without that per-batch step).
    """
    return 1 <= i <= RECENTER_UNTIL and i & (i - 1) == 0


class NCStats:
    """Sufficient statistics for the NC metrics of DESIGN.md, in O(Kd + d^2) memory.

    Every class k has its own shift c_k (a running estimate of its mean, stored as
    ``g + E_k`` with a global reference g), so that the accumulated deviations are
    within-class sized: the within-class covariance comes out without the catastrophic
    cancellation a single global shift suffers on well-separated (collapsed) classes, and
    the result does not depend on how the data were batched or ordered. The shifts start at
    the first batch's class means (a class absent from it, in float32 statistics: at the class
    mean of the batch it first appears in) and are moved, exactly, onto the running class means before the
    updates 1, 2, 4, 8, 16, 32 (see ``_recenter_classes_``). One packed buffer holds

    * ``counts``   (K,)   n_k
    * class sums   (K, d) sum over class k of (h_i - c_k)
    * second moment (d, d) sum over i of (h_i - c_{y_i})(h_i - c_{y_i})^T
    * squared norms (K,)  sum over class k of ||h_i - c_k||^2 (for cdnv's s_k)

    on the device of the features, in float64 by default (``dtype=torch.float32`` for GPUs
    with slow float64: the shifts keep it accurate, see the tests for its error bound).
    Features of any float dtype (bf16/fp16 included) are cast on their own device; they are
    never kept. The attributes ``shift`` (d,), ``sums`` (K, d), ``second`` (d, d) and
    ``sq_norms`` (K,) give the same statistics about the single global mean (float64,
    computed on access).

    Input checks run on the device: ``update`` and ``ncc_pass`` never synchronise with the
    host (no ``.item()``, no branching on tensor values); a bad batch (NaN/inf features,
    squared norms overflowing, labels outside [0, K)) is left out of the statistics and
    recorded with its call index, and the ``ValueError`` naming it is raised at the next
    check: every ``check_every`` calls, and always in ``compute``, the first ``ncc_pass``,
    ``merge`` and ``all_reduce``. The default checks CPU statistics at every call (a host
    read costs nothing there, and the error points at the call that caused it; the batch is
    skipped, so a caller may catch it and go on) and CUDA statistics only at those points.
    With deferred checks the error stays until the accumulator is dropped.

    Order of calls, on one process or many (torch.distributed):

    1. ``update(features, labels)`` for every batch (each rank its own share);
    2. ``all_reduce()`` -- sums the statistics over ranks (a no-op on one process, or with
       ``distributed=False``); every rank must call it, also a rank that saw no data: an
       accumulator that was never updated contributes zeros (give it ``dim``, or let it take
       d from the other ranks);
    3. optionally ``ncc_pass(features, labels)`` over the same data again (it needs the
       global class means), then ``all_reduce()`` again, which now sums only the NCC
       counts;
    4. ``compute(classifier_weight=None)`` on any rank.

    ``compute`` reports ``ncc_acc`` only once an ``ncc_pass`` counted some samples. Shards of
    one process can be combined with ``merge`` before any ``ncc_pass`` and ``all_reduce``.
    ``update``/``merge`` after an ``ncc_pass`` raise RuntimeError (they would move the means
    the NCC counts were made with), and so do, in a multi-process run, ``update``/``merge``
    after ``all_reduce`` and ``ncc_pass`` before it.

    Args:
        num_classes: K >= 2; labels are 0..K-1.
        dim: Feature dimension d; None: taken from the first batch (or, in ``all_reduce``, from
            the other ranks).
        device: Where to keep the statistics; default: the device of the first batch.
        dtype: Accumulation dtype, ``torch.float64`` (default) or ``torch.float32``.
        check_every: Raise recorded input errors every this many ``update``/``ncc_pass``
            calls; 0: only at ``compute``/first ``ncc_pass``/``merge``/``all_reduce``;
            None (default): 1 for CPU statistics, 0 on other devices.
        distributed: Whether ``all_reduce`` sums over torch.distributed ranks (when
            initialised); False keeps the statistics local (``ncc_pass`` then needs no
            ``all_reduce``).
    """

    def __init__(
        self,
        num_classes: int,
        dim: int | None = None,
        device: torch.device | str | None = None,
        *,
        dtype: torch.dtype = torch.float64,
        check_every: int | None = None,
        distributed: bool = True,
    ):
        self.num_classes = check_num_classes(num_classes)
        if dim is not None and (isinstance(dim, bool) or int(dim) != dim or dim < 1):
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.dim: int | None = None if dim is None else int(dim)
        if dtype not in (torch.float64, torch.float32):
            raise ValueError(f"dtype must be torch.float64 or torch.float32, got {dtype}")
        self.dtype = dtype
        if check_every is not None and (
            isinstance(check_every, bool) or int(check_every) != check_every or check_every < 0
        ):
            raise ValueError(f"check_every must be a non-negative integer or None, got {check_every!r}")
        self._check_every_arg = check_every
        self.check_every = 0
        self.distributed = bool(distributed)
        self.device: torch.device | None = None
        self._device_hint = None if device is None else torch.device(device)
        self._reduced = False  # statistics already summed over ranks
        self._ncc_done = False  # an ncc_pass was made (on this rank)
        self._ncc_prep: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._calls = 0  # update() calls (the batch index named in errors)
        self._nonempty = 0  # non-empty update() calls (the re-centring schedule)
        self._all_seen = False  # every class has samples: no class can need a first shift any more
        self._input_eps = 0.0  # machine eps of the coarsest features accumulated (0: none yet)
        self._ncc_calls = 0
        self._buf: torch.Tensor | None = None  # the (B, d+2) work buffer of update()
        if self._device_hint is not None and self.dim is not None:
            self._materialize(self._device_hint)

    # ------------------------------------------------------------------ storage
    def _materialize(self, device: torch.device) -> None:
        """Allocates the packed buffer and its views on ``device`` (once)."""
        if self.device is not None:
            return
        if self.dim is None:
            raise ValueError("NCStats needs dim before it holds statistics (pass dim=...)")
        K, d, acc = self.num_classes, self.dim, self.dtype
        self.device = device
        if self._check_every_arg is None:
            self.check_every = 1 if device.type == "cpu" else 0
        else:
            self.check_every = int(self._check_every_arg)
        # packed: [per-class block (K, d+2) = sums | sq_norms | counts] [second (d*d)]
        kb = K * (d + 2)
        self._flat = torch.zeros(kb + d * d, dtype=acc, device=device)
        self._block = self._flat[:kb].view(K, d + 2)  # one index_add_ per batch updates it
        self._sums = self._block[:, :d]  # (K, d) about c_k
        self._q = self._block[:, d]  # (K,)
        self.counts = self._block[:, d + 1]  # (K,)
        self._S = self._flat[kb : kb + d * d].view(d, d)  # (d, d)
        # shifts c_k = g + E_k, float64 values that are exact in ``acc`` (the shift used is
        # the shift stored)
        self._set_shift(torch.zeros(d, dtype=torch.float64, device=device),
                        torch.zeros(K, d, dtype=torch.float64, device=device))  # fmt: skip
        self._ncc_local = torch.zeros(2, dtype=torch.float64, device=device)  # [correct, total]
        self._ncc_total = torch.zeros(2, dtype=torch.float64, device=device)  # reduced
        self._flags = self._new_flags()
        self._ncc_flags = self._new_flags()

    def _new_flags(self) -> torch.Tensor:
        return torch.full((5,), -1, dtype=torch.int64, device=self.device)

    def _set_shift(self, g: torch.Tensor, E: torch.Tensor) -> None:
        self._g = g.to(self.dtype).to(torch.float64)
        self._E = E.to(self.dtype).to(torch.float64).contiguous()
        self._g_acc = self._g.to(self.dtype)
        self._E_acc = self._E.to(self.dtype)

    @property
    def num_samples(self) -> int:
        """Number of samples accumulated so far (on this rank until ``all_reduce``)."""
        return 0 if self.device is None else int(self.counts.sum())

    def _recenter_classes_(self) -> None:
        """Moves every class's shift onto its running mean, exactly (in place, on the device).

        With delta_k = sums_k / n_k: S -= sum_k n_k delta_k delta_k^T, q_k -= n_k |delta_k|^2,
        sums_k = 0, E_k += delta_k. One (d, K) x (K, d) product.
        """
        n = self.counts
        inv = torch.where(n > 0, 1.0 / n.clamp_min(1), torch.zeros((), dtype=n.dtype, device=n.device))
        delta = self._sums * inv[:, None]  # (K, d)
        self._S.addmm_(delta.T, self._sums, alpha=-1.0)
        self._q.sub_((delta * self._sums).sum(dim=1))
        self._sums.zero_()
        self._set_shift(self._g, self._E + delta.to(torch.float64))

    # ------------------------------------------------------------------ checks
    def _record(self, flags, i, nonfinite, overflow, bad_labels, lo, hi) -> None:
        """Stores call index ``i`` in the slots of the problems seen first now (no sync)."""
        new = torch.stack([nonfinite, overflow, bad_labels])  # (3,) bool
        first = (flags[:3] < 0) & new
        flags[:3].masked_fill_(first, i)
        flags[_LO] = torch.where(first[2], lo, flags[_LO])
        flags[_HI] = torch.where(first[2], hi, flags[_HI])

    def _messages(self, flags: list[int], what: str) -> list[str]:
        K = self.num_classes
        out = []
        if flags[_NONFINITE] >= 0:
            out.append(f"features contain NaN or inf values (batch {flags[_NONFINITE]} given to {what})")
        if flags[_OVERFLOW] >= 0:
            name = str(self.dtype).replace("torch.", "")
            out.append(f"features are too large: their squared norms overflow {name} "
                       f"(batch {flags[_OVERFLOW]} given to {what})")  # fmt: skip
        if flags[_LABELS] >= 0:
            bad = sorted({v for v in (flags[_LO], flags[_HI]) if not 0 <= v < K})
            out.append(f"labels outside [0, {K}) (num_classes={K}): {bad} "
                       f"(batch {flags[_LABELS]} given to {what}; smallest/largest shown)")  # fmt: skip
        return out

    def _all_messages(self, flags: list[int] | None = None) -> list[str]:
        if flags is None:
            if self.device is None:
                return []
            flags = torch.cat([self._flags, self._ncc_flags]).tolist()  # the one host sync
        return self._messages(flags[:5], "update()") + self._messages(flags[5:], "ncc_pass()")

    def _raise_if_bad(self) -> None:
        """Raises the recorded input errors (one host sync)."""
        msgs = self._all_messages()
        if msgs:
            if self.check_every == 1:  # the error names the very call that raised: go on after it
                self._flags.fill_(-1)
                self._ncc_flags.fill_(-1)
            raise ValueError("; ".join(msgs))

    def _batch_flags(self, x: torch.Tensor, y: torch.Tensor):
        """Device-side validity of a batch: (finite, labels_ok, lo, hi), all 0-dim tensors."""
        finite = torch.isfinite(x).all()
        lo, hi = torch.aminmax(y)
        return finite, (lo >= 0) & (hi < self.num_classes), lo, hi

    # ------------------------------------------------------------------ passes
    def _prepare(self, features: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x = as_features(features, self.dim)
        y = as_labels(labels, x.shape[0], x.device)
        if self.dim is None:
            self.dim = int(x.shape[1])
        self._materialize(self._device_hint or x.device)
        return x.to(self.device), y.to(self.device)

    def update(self, features: Any, labels: Any) -> NCStats:
        """Accumulates a batch: one ``addmm_`` for the second moment, one ``index_add_`` for
        class sums, squared norms and counts, no host sync (see the class docstring for when
        input errors are raised).

        Args:
            features: (B, d), any float dtype, CPU or CUDA (tensor, array or list); tensors
                that require grad are detached.
            labels: (B,) integers in [0, K).

        Returns:
            self.

        Raises:
            ValueError: bad shapes or dtypes (at once); NaN/inf features, overflowing squared
                norms, labels outside [0, K) (at the next check, naming the batch).
            RuntimeError: called after ``ncc_pass``, or after a multi-process ``all_reduce``.
        """
        x, y = self._prepare(features, labels)
        if self._ncc_done:
            raise RuntimeError("update() after ncc_pass(): the class means would change")
        if self._reduced:
            raise RuntimeError("update() after all_reduce(): start a new NCStats for new data")
        if x.shape[0]:
            self._input_eps = max(self._input_eps, torch.finfo(x.dtype).eps)
        call = self._calls
        self._calls += 1
        B, d = x.shape
        if B == 0:
            return self
        i = self._nonempty
        self._nonempty += 1
        if i > 0 and _recenter_due(i):
            self._recenter_classes_()
        acc = self.dtype
        lo, hi = torch.aminmax(y)
        labels_ok = (lo >= 0) & (hi < self.num_classes)
        yc = y.clamp(0, self.num_classes - 1)  # safe indices; a bad batch adds zeros below
        if i == 0:  # shifts: this batch's mean and class means (zeros if the batch is bad)
            # NaN/inf anywhere make the float64 total non-finite (a reduction, no N*d mask)
            finite = torch.isfinite(x.sum(dtype=torch.float64))
            ok = finite & labels_ok
            x64 = x.to(torch.float64)
            mean = torch.where(ok, x64.mean(dim=0), 0.0)  # (d,)
            part = torch.zeros(self.num_classes, d + 1, dtype=torch.float64, device=self.device)
            part[:, :d].index_add_(0, yc, x64 - mean)
            part[:, d].index_add_(0, yc, torch.ones_like(x64[:, 0]))
            E = torch.where(ok & (part[:, d:] > 0), part[:, :d] / part[:, d:].clamp_min(1), 0.0)
            self._set_shift(mean, E)
            del x64, part
        if self._buf is None or self._buf.shape[0] < B:  # reused: no fresh pages per batch
            self._buf = torch.empty(B, d + 2, dtype=acc, device=self.device)
        aug = self._buf[:B]  # (B, d+2)
        xs = aug[:, :d]
        if torch.finfo(x.dtype).eps >= torch.finfo(acc).eps:  # the cast is exact: copy, shift
            xs.copy_(x).sub_(self._g_acc)
        else:  # float64 features, float32 statistics: shift in float64 first
            torch.sub(x, self._g_acc, out=xs)
        xs.sub_(torch.index_select(self._E_acc, 0, yc))  # (h - g) - E_k: no large offset formed
        if i > 0 and not self._all_seen and self.dtype == torch.float32:  # float64 keeps such classes to ~1e-10
            self._shift_new_classes(xs, yc, labels_ok)
        aug[:, d] = torch.linalg.vector_norm(xs, dim=1).square_()  # ||h - c_k||^2
        aug[:, d + 1] = 1.0
        if i > 0:  # NaN/inf in h make the total of h - c_k non-finite
            finite = torch.isfinite(xs.sum())
            ok = finite & labels_ok
        overflow = finite & ~torch.isfinite(aug[:, d]).all()  # finite features, squares overflow
        good = ok & ~overflow
        if i == 0:
            self._set_shift(torch.where(good, self._g, 0.0), torch.where(good, self._E, 0.0))
        aug.masked_fill_(~good, 0.0)  # a bad batch adds nothing (NaN * 0 would be NaN)
        self._S.addmm_(xs.T, xs)  # (d, d), the one O(B d^2) step
        self._block.index_add_(0, yc, aug)  # sums, sq_norms, counts at once
        self._record(self._flags, call, ~finite, overflow, ~labels_ok, lo, hi)
        if self.check_every and self._calls % self.check_every == 0:
            self._raise_if_bad()
        return self

    def _shift_new_classes(self, xs: torch.Tensor, yc: torch.Tensor, labels_ok: torch.Tensor) -> None:
        """Classes seen for the first time in this batch take its class means as their shifts (in place on ``xs``).

        They hold nothing yet, so the move is exact. Without it a class absent from the first batch
        (class-sorted data: an image folder read in order) kept the first batch's mean as its shift
        until the next re-centring, or for good after update 32, and its deviations were accumulated
        between-class sized: float32 statistics lost NC1 to a few percent.

        With checks at every call (the CPU default, which reads the device anyway) it stops once every
        class has samples; with deferred checks (CUDA) every batch runs it without a host sync, a
        no-op for the classes already seen.
        """
        K, d = self.num_classes, xs.shape[1]
        unseen = self.counts == 0
        present = torch.zeros(K, dtype=torch.bool, device=xs.device).index_fill_(0, yc, True)
        if self.check_every == 1:
            any_new, any_unseen = torch.stack([(unseen & present & labels_ok).any(), unseen.any()]).tolist()
            self._all_seen = not any_unseen
            if not any_new:
                return
        part = torch.zeros(K, d + 1, dtype=xs.dtype, device=xs.device)
        part[:, :d].index_add_(0, yc, xs)
        part[:, d].index_add_(0, yc, torch.ones_like(xs[:, 0]))
        delta = part[:, :d] / part[:, d:].clamp_min(1)  # this batch's class means about the current shifts
        new = labels_ok & unseen & present & torch.isfinite(delta).all(dim=1)
        old = self._E
        self._set_shift(self._g, torch.where(new[:, None], old + delta.to(torch.float64), old))
        xs.sub_(torch.index_select((self._E - old).to(xs.dtype), 0, yc))  # zero for every class but the new ones

    def _class_means(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """float64 ``(mu_G - g (d,), M (K, d), counts (K,))``; classes must be non-empty."""
        n = self.counts.to(torch.float64)
        m = self._E + self._sums.to(torch.float64) / n[:, None]  # (K, d) mu_k - g
        z = (n @ m) / n.sum()  # (d,) mu_G - g
        return z, m - z, n

    def ncc_pass(self, features: Any, labels: Any) -> NCStats:
        """Counts nearest-class-centre hits for a batch, with the current class means.

        Call it after all ``update`` calls (and after ``all_reduce`` in a multi-process
        run), over the same data; then ``all_reduce()`` again to sum the counts. The first
        call checks the statistics (one host sync); later calls do not synchronise.

        Args:
            features: (B, d), any float dtype.
            labels: (B,) integers in [0, K).

        Returns:
            self.

        Raises:
            ValueError: bad input, classes without samples (their mean is undefined), or a single
                sample in every class (``compute`` refuses those statistics).
            RuntimeError: in a multi-process run, before ``all_reduce``.
        """
        x, y = self._prepare(features, labels)
        if self.distributed and is_distributed() and not self._reduced:
            raise RuntimeError("ncc_pass() needs the global class means: call all_reduce() first")
        if self._ncc_prep is None:
            self._raise_if_bad()
            check_nonempty(self.counts)
            check_within_class(self.counts)  # compute() would refuse these statistics: not after a second pass
            z, M, _ = self._class_means()
            self._ncc_prep = (self._g + z, M, (M * M).sum(dim=1))
        self._ncc_done = True
        call = self._ncc_calls
        self._ncc_calls += 1
        if x.shape[0] == 0:
            return self
        ref, M, m2 = self._ncc_prep
        finite, labels_ok, lo, hi = self._batch_flags(x, y)
        xs = x.to(torch.float64) - ref  # (B, d) h - mu_G
        # argmin_k ||x - m_k||^2 = argmin_k (||m_k||^2 - 2 x.m_k)
        scores = torch.addmm(m2, xs, M.T, alpha=-2.0)  # (B, K)
        correct = (scores.argmin(dim=1) == y).sum()
        good = (finite & labels_ok).to(torch.float64)  # a bad batch counts nothing
        self._ncc_local[0] += correct * good
        self._ncc_local[1] += x.shape[0] * good
        self._record(self._ncc_flags, call, ~finite, torch.zeros_like(finite), ~labels_ok, lo, hi)
        if self.check_every and self._ncc_calls % self.check_every == 0:
            self._raise_if_bad()
        return self

    # ------------------------------------------------------------------ combining
    def merge(self, other: NCStats) -> NCStats:
        """Adds another accumulator's statistics (Chan et al.'s exact pairwise combination).

        Args:
            other: An NCStats with the same K and d (it is not modified).

        Returns:
            self.

        Raises:
            ValueError: different num_classes or dim, or bad input recorded in either.
            RuntimeError: either side already ran ``ncc_pass`` (its NCC counts were made with
                means the merge changes), or was all-reduced in a multi-process run.
        """
        if not isinstance(other, NCStats):
            raise ValueError(f"can only merge NCStats, got {type(other).__name__}")
        if other.num_classes != self.num_classes or (
            other.dim is not None and self.dim is not None and other.dim != self.dim
        ):
            raise ValueError(
                f"cannot merge NCStats with (num_classes, dim) = ({other.num_classes}, {other.dim}) "
                f"into ({self.num_classes}, {self.dim})"
            )
        if self._ncc_done or other._ncc_done:
            raise RuntimeError(
                "merge() after ncc_pass(): the merge moves the class means, so the NCC counts "
                "would be stale; merge the statistics first, then run ncc_pass()"
            )
        if self._reduced or other._reduced:
            raise RuntimeError("merge() after all_reduce(): merge local shards before reducing")
        for side in (self, other):
            msgs = side._all_messages()
            if msgs:
                raise ValueError("cannot merge NCStats that recorded bad input: " + "; ".join(msgs))
        if other.device is None:
            return self
        if self.dim is None:
            self.dim = other.dim
        self._materialize(other.device)
        if self._nonempty == 0:  # nothing here yet: take the other's reference
            self._set_shift(other._g.to(self.device), self._E)
        self._recenter_classes_()
        o_flat = other._flat.to(self.device, self.dtype)
        o = NCStats(self.num_classes, self.dim, self.device, dtype=self.dtype)
        o._flat.copy_(o_flat)
        o._set_shift(other._g.to(self.device), other._E.to(self.device))
        o._recenter_classes_()
        na, nb = self.counts.to(torch.float64), o.counts.to(torch.float64)
        n = na + nb
        safe = n.clamp_min(1)
        mb = (o._g - self._g) + o._E  # (K, d) other's class means - g
        delta = mb - self._E  # (K, d)
        coef = na * nb / safe  # 0 where either side lacks the class
        self._S.add_((delta.T @ (coef[:, None] * delta)).to(self.dtype))
        self._S.add_(o._S)
        self._q.add_((o._q.to(torch.float64) + coef * (delta * delta).sum(dim=1)).to(self.dtype))
        self.counts.add_(o.counts)
        self._set_shift(self._g, self._E + (nb / safe)[:, None] * delta)
        self._nonempty += other._nonempty
        self._calls += other._calls
        self._input_eps = max(self._input_eps, other._input_eps)
        return self

    def _agree(self) -> None:
        """First step of ``all_reduce``: every rank's (K, d) and recorded errors, gathered.

        Raises the same ValueError on every rank (so none is left waiting in a collective):
        ranks that disagree on K or d, or bad input recorded on any rank.
        """
        dev = self.device or default_device()
        flags = [-1] * 10 if self.device is None else torch.cat([self._flags, self._ncc_flags]).tolist()
        bits = round(-math.log2(self._input_eps)) if self._input_eps > 0 else -1  # mantissa bits of the coarsest input
        mine = torch.tensor([self.num_classes, -1 if self.dim is None else self.dim, bits, *flags],
                            dtype=torch.int64, device=dev)  # fmt: skip
        got = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(got, mine)
        rows = [t.tolist() for t in got]
        shapes = {r: (row[0], row[1]) for r, row in enumerate(rows)}
        ks = {k for k, _ in shapes.values()}
        ds = {d for _, d in shapes.values() if d >= 0}
        if len(ks) > 1 or len(ds) > 1:
            listed = ", ".join(f"rank {r} has ({k}, {'unknown' if d < 0 else d})" for r, (k, d) in shapes.items())
            raise ValueError(f"NCStats.all_reduce(): ranks disagree on (num_classes, dim): {listed}")
        if not ds:
            raise ValueError("NCStats.all_reduce(): no rank knows the feature dimension; pass dim=...")
        if self.dim is None:
            self.dim = ds.pop()
        # every rank computes NC1 with the same input rounding floor: the coarsest features of any rank
        self._input_eps = max([self._input_eps] + [2.0 ** -row[2] for row in rows if row[2] >= 0])
        bad = [f"rank {r}: " + "; ".join(m) for r, row in enumerate(rows) if (m := self._all_messages(row[3:]))]
        if bad:
            raise ValueError("NCStats.all_reduce(): bad input: " + " | ".join(bad))

    def all_reduce(self) -> NCStats:
        """Sums the statistics over all torch.distributed ranks (no-op on one process).

        First call: an all_gather of (K, d, recorded errors) per rank (a ValueError on every
        rank if they disagree or any rank saw bad input), an all_reduce of [N, N g] (d + 1
        numbers) for a common reference, one of [n_k, n_k E_k] (K(d+1)) for common class
        shifts, an exact re-centring of each rank onto them, then one all_reduce of the
        packed buffer (K(d+2) + d^2 numbers). Later calls sum only the NCC counts (2
        numbers) made by ``ncc_pass`` since. Every rank must call it (collective), also a
        rank that saw no data: it contributes zeros.

        Returns:
            self.

        Raises:
            ValueError: see above (the same on every rank).
        """
        if not (self.distributed and is_distributed()):
            return self
        self._agree()
        self._materialize(self.device or default_device())
        if not self._reduced:
            self._recenter_classes_()  # own class means: S holds the within-class part only
            n = self.counts.to(torch.float64)  # (K,)
            N = n.sum()
            head = torch.cat([N.view(1), N * self._g])  # (1 + d,)
            all_reduce_sum_(head)
            g = head[1:] / head[0].clamp_min(1)
            E = self._E + (self._g - g)  # this rank's class means - common g
            mid = torch.cat([n[:, None], n[:, None] * E], dim=1)  # (K, 1 + d)
            all_reduce_sum_(mid)
            E_all = mid[:, 1:] / mid[:, :1].clamp_min(1)  # common class shifts
            delta = E - E_all  # (K, d): own mean - common shift (sums are 0 now)
            self._S.add_((delta.T @ (n[:, None] * delta)).to(self.dtype))
            self._q.add_((n * (delta * delta).sum(dim=1)).to(self.dtype))
            self._sums.copy_((n[:, None] * delta).to(self.dtype))
            all_reduce_sum_(self._flat)
            self._set_shift(g, E_all)
            self._reduced = True
        else:
            all_reduce_sum_(self._ncc_local)
        self._ncc_total += self._ncc_local
        self._ncc_local.zero_()
        return self

    # ------------------------------------------------------------------ global-shift view
    def _global_view(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """float64 statistics about the global mean: (shift, sums, second, sq_norms)."""
        if self.device is None:
            raise ValueError("no samples were accumulated")
        n = self.counts.to(torch.float64)
        N = n.sum().clamp_min(1)
        sums = self._sums.to(torch.float64)
        inv = torch.where(n > 0, 1.0 / n.clamp_min(1), torch.zeros_like(n))
        m = self._E + sums * inv[:, None]  # (K, d) mu_k - g (E_k where empty)
        z = (n @ m) / N
        M = (m - z) * (n > 0)[:, None]
        Sw = self._S.to(torch.float64) - (sums.T * inv) @ sums
        second = Sw + M.T @ (n[:, None] * M)
        q = self._q.to(torch.float64) - (sums * sums).sum(dim=1) * inv + n * (M * M).sum(dim=1)
        return self._g + z, n[:, None] * M, (second + second.T) / 2, q

    @property
    def shift(self) -> torch.Tensor:
        """(d,) float64: the global mean, the shift of ``sums``/``second``/``sq_norms``."""
        return self._global_view()[0]

    @property
    def sums(self) -> torch.Tensor:
        """(K, d) float64: sum over class k of (h_i - shift)."""
        return self._global_view()[1]

    @property
    def second(self) -> torch.Tensor:
        """(d, d) float64: sum over all i of (h_i - shift)(h_i - shift)^T."""
        return self._global_view()[2]

    @property
    def sq_norms(self) -> torch.Tensor:
        """(K,) float64: sum over class k of ||h_i - shift||^2."""
        return self._global_view()[3]

    # ------------------------------------------------------------------ metrics
    def compute(self, classifier_weight: Any = None) -> dict[str, float]:
        """Computes the NC metrics of DESIGN.md from the statistics.

        Memory beyond the statistics: O(Kd + d^2) plus row blocks of the K x K pairwise
        terms (``formulas.PAIRWISE_CHUNK``), so K = 21k fits.

        Args:
            classifier_weight: Optional classifier weight W (K, d) for ``nc3``.

        Returns:
            Dict with ``nc1, nc2_etf, nc2_equinorm, nc2_equiangle``, ``nc3`` (only with W),
            ``ncc_acc`` (only after an ``ncc_pass``), ``cdnv``, ``num_samples`` and
            ``num_classes``.

        Raises:
            ValueError: bad input recorded by ``update``/``ncc_pass``, no samples, classes
                without samples (named), a single sample in every class, bad W shape.
        """
        self._raise_if_bad()
        if self.device is None or float(self.counts.sum()) == 0:
            raise ValueError("no samples were accumulated")
        check_nonempty(self.counts)
        check_within_class(self.counts)
        z, M, n = self._class_means()
        N = n.sum()
        sums = self._sums.to(torch.float64)
        sigma_w = (self._S.to(torch.float64) - (sums.T / n) @ sums) / N  # (d, d)
        sigma_w = (sigma_w + sigma_w.T) / 2
        spread = ((self._q.to(torch.float64) - (sums * sums).sum(dim=1) / n) / n).clamp_min(0)  # (K,)

        eps = torch.finfo(self.dtype).eps
        # the rounding floor of the features themselves: their RMS norm (about the origin, where
        # they were rounded) times a few of their eps (see formulas.nc1)
        mu_G = self._g + z  # (d,)
        total = float(torch.trace(sigma_w)) + float((n[:, None] * M * M).sum() / N) + float(mu_G @ mu_G)
        floor = INPUT_ROUNDINGS * self._input_eps * max(total, 0.0) ** 0.5
        Mc = M.cpu()  # the small O(K^2 d) formulas run on the CPU (fewer GPU syncs)
        pair = formulas.pairwise(Mc, spread.cpu())
        out: dict[str, float] = {
            "nc1": formulas.nc1(sigma_w, M, n, eps=eps, floor=floor),
            "nc2_etf": pair["nc2_etf"],
            "nc2_equinorm": formulas.nc2_equinorm(Mc),
            "nc2_equiangle": pair["nc2_equiangle"],
        }
        if classifier_weight is not None:
            W = as_classifier_weight(classifier_weight, self.num_classes, self.dim, Mc.device)
            out["nc3"] = formulas.nc3(W, Mc)
        ncc = self._ncc_total + self._ncc_local
        if float(ncc[1]) > 0:
            out["ncc_acc"] = float(ncc[0] / ncc[1])
        out["cdnv"] = pair["cdnv"]
        out["num_samples"] = int(N)
        out["num_classes"] = self.num_classes
        return out

    def __repr__(self) -> str:
        return (
            f"NCStats(num_classes={self.num_classes}, dim={self.dim}, "
            f"num_samples={self.num_samples}, device={self.device}, dtype={self.dtype})"
        )
