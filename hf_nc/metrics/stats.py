"""NCStats: a streaming, mergeable, all-reducible accumulator of NC sufficient statistics."""

from __future__ import annotations

from typing import Any

import torch

from . import formulas
from .distributed import all_reduce_sum_, default_device, is_distributed
from .validation import (
    as_classifier_weight,
    as_features,
    as_labels,
    check_batch,
    check_nonempty,
    check_num_classes,
)


class NCStats:
    """Float64 sufficient statistics for the NC metrics of DESIGN.md, in O(Kd + d^2) memory.

    With a shift c (d,) -- the mean of the first non-empty batch, so that shifted features
    are small and the second moment keeps its precision under a large common offset -- it
    holds, in one packed float64 buffer on the device of the features:

    * ``counts``   (K,)   n_k
    * ``sums``     (K, d) sum over class k of (h_i - c)
    * ``second``   (d, d) sum over all i of (h_i - c)(h_i - c)^T
    * ``sq_norms`` (K,)   sum over class k of ||h_i - c||^2 (for cdnv's s_k)
    * ``ncc``      (2,)   nearest-class-centre [correct, total] counts of ``ncc_pass``

    Features of any float dtype (bf16/fp16 included) are cast to float64 on their own
    device (CPU or CUDA) before they are accumulated; the features are never kept.

    Order of calls, on one process or many (torch.distributed):

    1. ``update(features, labels)`` for every batch (each rank its own share);
    2. ``all_reduce()`` -- sums the statistics over ranks (a no-op on one process);
    3. optionally ``ncc_pass(features, labels)`` over the same data again (it needs the
       global class means), then ``all_reduce()`` again, which now sums only the NCC
       counts;
    4. ``compute(classifier_weight=None)`` on any rank.

    ``compute`` reports ``ncc_acc`` only once an ``ncc_pass`` counted some samples. Shards of one
    process can be combined with ``merge`` before ``all_reduce``. In a multi-process run,
    ``update``/``merge`` after ``all_reduce`` and ``ncc_pass`` before it raise
    RuntimeError; ``update`` after an ``ncc_pass`` always does (it would move the means).

    Args:
        num_classes: K >= 2; labels are 0..K-1.
        dim: Feature dimension d.
        device: Where to keep the statistics; default: the device of the first batch.
    """

    def __init__(self, num_classes: int, dim: int, device: torch.device | str | None = None):
        self.num_classes = check_num_classes(num_classes)
        if isinstance(dim, bool) or int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.dim = int(dim)
        self.device: torch.device | None = None
        self._reduced = False  # statistics already summed over ranks
        self._ncc_done = False  # an ncc_pass was made (on this rank)
        self._ncc_total = torch.zeros(2, dtype=torch.float64)  # reduced [correct, total]
        if device is not None:
            self._materialize(torch.device(device))

    # ------------------------------------------------------------------ storage
    def _materialize(self, device: torch.device) -> None:
        """Allocates the packed buffer and its views on ``device`` (once)."""
        if self.device is not None:
            return
        K, d = self.num_classes, self.dim
        self.device = device
        # packed: [per-class block (K, d+2) = sums | sq_norms | counts] [second (d*d)] [ncc (2)]
        kb = K * (d + 2)
        self._flat = torch.zeros(kb + d * d + 2, dtype=torch.float64, device=device)
        self._block = self._flat[:kb].view(K, d + 2)  # one index_add_ per batch updates it
        self.sums = self._block[:, :d]  # (K, d)
        self.sq_norms = self._block[:, d]  # (K,)
        self.counts = self._block[:, d + 1]  # (K,)
        self.second = self._flat[kb : kb + d * d].view(d, d)  # (d, d)
        self._ncc_local = self._flat[kb + d * d :]  # (2,)
        self.shift = torch.zeros(d, dtype=torch.float64, device=device)  # (d,)
        self._has_shift = False
        self._ncc_total = self._ncc_total.to(device)

    @property
    def num_samples(self) -> int:
        """Number of samples accumulated so far (on this rank until ``all_reduce``)."""
        return 0 if self.device is None else int(self.counts.sum())

    def _recenter_(self, new_shift: torch.Tensor) -> None:
        """Moves the statistics onto ``new_shift`` exactly (in place).

        With delta = c - c' and s = sum of (h - c): S' = S + delta s^T + s delta^T
        + N delta delta^T; sums_k' = sums_k + n_k delta; q_k' = q_k + 2 delta.sums_k
        + n_k ||delta||^2.
        """
        delta = self.shift - new_shift  # (d,)
        total = self.sums.sum(dim=0)  # (d,)
        n = self.counts.sum()
        outer = torch.outer(delta, total)  # (d, d)
        self.second.add_(outer).add_(outer.T).add_(torch.outer(delta, delta), alpha=float(n))
        self.sq_norms.add_(2.0 * (self.sums @ delta) + self.counts * delta.dot(delta))
        self.sums.add_(self.counts[:, None] * delta)
        self.shift = new_shift.clone()
        self._has_shift = True

    # ------------------------------------------------------------------ passes
    def _prepare(
        self, features: Any, labels: Any, check: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = as_features(features, self.dim)
        y = as_labels(labels, x.shape[0], x.device)
        if check:
            check_batch(x, y, self.num_classes)
        self._materialize(x.device)
        return x.to(self.device), y.to(self.device)

    def update(self, features: Any, labels: Any) -> NCStats:
        """Accumulates a batch: one ``addmm_`` for the second moment, one ``index_add_`` for
        class sums, squared norms and counts; one host sync for the input checks.

        Args:
            features: (B, d), any float dtype, CPU or CUDA (tensor, array or list).
            labels: (B,) integers in [0, K).

        Returns:
            self.

        Raises:
            ValueError: bad shapes, NaN/inf features, labels outside [0, K).
            RuntimeError: called after ``ncc_pass``, or after a multi-process ``all_reduce``.
        """
        x, y = self._prepare(features, labels, check=False)  # checked below, in one sync
        if self._ncc_done:
            raise RuntimeError("update() after ncc_pass(): the class means would change")
        if self._reduced:
            raise RuntimeError("update() after all_reduce(): start a new NCStats for new data")
        B, d = x.shape
        if B == 0:
            return self
        if not self._has_shift:
            self.shift = x.to(torch.float64).mean(dim=0)  # (d,) fixed from now on
            self._has_shift = True
        aug = torch.empty(B, d + 2, dtype=torch.float64, device=self.device)  # (B, d+2)
        xs = aug[:, :d]
        torch.sub(x, self.shift, out=xs)  # cast to float64 and shift in one kernel
        aug[:, d] = (xs * xs).sum(dim=1)  # ||h - c||^2
        aug[:, d + 1] = 1.0
        check_batch(x, y, self.num_classes, row_sq=aug[:, d])  # NaN/inf show in row norms
        self.second.addmm_(xs.T, xs)  # (d, d), the one O(B d^2) step
        self._block.index_add_(0, y, aug)  # sums, sq_norms, counts at once
        return self

    def ncc_pass(self, features: Any, labels: Any) -> NCStats:
        """Counts nearest-class-centre hits for a batch, with the current class means.

        Call it after all ``update`` calls (and after ``all_reduce`` in a multi-process
        run), over the same data; then ``all_reduce()`` again to sum the counts.

        Args:
            features: (B, d), any float dtype.
            labels: (B,) integers in [0, K).

        Returns:
            self.

        Raises:
            ValueError: bad input, or classes without samples (their mean is undefined).
            RuntimeError: in a multi-process run, before ``all_reduce``.
        """
        x, y = self._prepare(features, labels)
        x = x.to(torch.float64)
        if is_distributed() and not self._reduced:
            raise RuntimeError("ncc_pass() needs the global class means: call all_reduce() first")
        check_nonempty(self.counts)
        self._ncc_done = True
        if x.shape[0] == 0:
            return self
        means = self.sums / self.counts[:, None]  # (K, d), mu_k - c
        x = x - self.shift  # (B, d)
        # argmin_k ||x - m_k||^2 = argmin_k (||m_k||^2 - 2 x.m_k)
        scores = torch.addmm(means.pow(2).sum(dim=1), x, means.T, alpha=-2.0)  # (B, K)
        correct = (scores.argmin(dim=1) == y).sum()
        self._ncc_local[0] += correct
        self._ncc_local[1] += x.shape[0]
        return self

    # ------------------------------------------------------------------ combining
    def merge(self, other: NCStats) -> NCStats:
        """Adds another accumulator's statistics (any shift; re-centred exactly onto ours).

        Args:
            other: An NCStats with the same K and d (it is not modified).

        Returns:
            self.

        Raises:
            ValueError: different num_classes or dim.
            RuntimeError: either side already all-reduced in a multi-process run.
        """
        if not isinstance(other, NCStats):
            raise ValueError(f"can only merge NCStats, got {type(other).__name__}")
        if (other.num_classes, other.dim) != (self.num_classes, self.dim):
            raise ValueError(
                f"cannot merge NCStats with (num_classes, dim) = ({other.num_classes}, {other.dim}) "
                f"into ({self.num_classes}, {self.dim})"
            )
        if self._reduced or other._reduced:
            raise RuntimeError("merge() after all_reduce(): merge local shards before reducing")
        if other.device is None:
            return self
        self._materialize(other.device)
        tmp = NCStats(self.num_classes, self.dim, device=self.device)
        tmp._flat.copy_(other._flat)
        tmp.shift, tmp._has_shift = other.shift.to(self.device), other._has_shift
        tmp._ncc_total = tmp._ncc_total.to(self.device)
        if not self._has_shift:
            self.shift, self._has_shift = tmp.shift.clone(), tmp._has_shift
        elif tmp._has_shift:
            tmp._recenter_(self.shift)
        self._flat.add_(tmp._flat)
        self._ncc_total += other._ncc_total.to(self.device)
        self._ncc_done = self._ncc_done or other._ncc_done
        return self

    def all_reduce(self) -> NCStats:
        """Sums the statistics over all torch.distributed ranks (no-op on one process).

        First call: one all_reduce of [N, sum of h] (d + 1 numbers) to agree on a common
        shift (the global mean), an exact re-centring, then one all_reduce of the packed
        float64 buffer (2K + Kd + d^2 + 2 numbers). Later calls sum only the NCC counts
        (2 numbers) made by ``ncc_pass`` since. Every rank must call it (collective),
        also a rank that saw no data.

        Returns:
            self.
        """
        if not is_distributed():
            return self
        self._materialize(default_device())
        if not self._reduced:
            n = self.counts.sum()
            head = torch.cat([n.view(1), n * self.shift + self.sums.sum(dim=0)])  # (1 + d,)
            all_reduce_sum_(head)
            new_shift = head[1:] / head[0] if float(head[0]) > 0 else torch.zeros_like(self.shift)
            self._recenter_(new_shift)
            all_reduce_sum_(self._flat)
            self._reduced = True
        else:
            all_reduce_sum_(self._ncc_local)
        self._ncc_total += self._ncc_local
        self._ncc_local.zero_()
        return self

    # ------------------------------------------------------------------ metrics
    def compute(self, classifier_weight: Any = None) -> dict[str, float]:
        """Computes the NC metrics of DESIGN.md from the statistics.

        Args:
            classifier_weight: Optional classifier weight W (K, d) for ``nc3``.

        Returns:
            Dict with ``nc1, nc2_etf, nc2_equinorm, nc2_equiangle``, ``nc3`` (only with W),
            ``ncc_acc`` (only after an ``ncc_pass``), ``cdnv``, ``num_samples`` and
            ``num_classes``.

        Raises:
            ValueError: no samples, classes without samples (named), bad W shape.
        """
        if self.device is None or float(self.counts.sum()) == 0:
            raise ValueError("no samples were accumulated")
        check_nonempty(self.counts)
        n = self.counts  # (K,)
        N = n.sum()
        centred = self.sums / n[:, None]  # (K, d), mu_k - c
        M = centred - self.sums.sum(dim=0) / N  # (K, d), mu_k - mu_G
        sigma_w = (self.second - (self.sums.T / n) @ self.sums) / N  # (d, d)
        sigma_w = (sigma_w + sigma_w.T) / 2
        spread = ((self.sq_norms - (self.sums**2).sum(dim=1) / n) / n).clamp_min(0)  # (K,)

        Mc = M.cpu()  # the small O(K^2 d) formulas run on the CPU (fewer GPU syncs)
        out: dict[str, float] = {
            "nc1": formulas.nc1(sigma_w, M),
            "nc2_etf": formulas.nc2_etf(Mc),
            "nc2_equinorm": formulas.nc2_equinorm(Mc),
            "nc2_equiangle": formulas.nc2_equiangle(Mc),
        }
        if classifier_weight is not None:
            W = as_classifier_weight(classifier_weight, self.num_classes, self.dim, Mc.device)
            out["nc3"] = formulas.nc3(W, Mc)
        ncc = self._ncc_total + self._ncc_local
        if float(ncc[1]) > 0:
            out["ncc_acc"] = float(ncc[0] / ncc[1])
        out["cdnv"] = formulas.cdnv(Mc, spread.cpu())
        out["num_samples"] = int(N)
        out["num_classes"] = self.num_classes
        return out

    def __repr__(self) -> str:
        return (
            f"NCStats(num_classes={self.num_classes}, dim={self.dim}, "
            f"num_samples={self.num_samples}, device={self.device})"
        )
