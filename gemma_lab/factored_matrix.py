"""FactoredMatrix: a product ``A @ B`` kept as its two factors, for circuit analysis.

An attention head's OV circuit ``W_V @ W_O`` is a ``[d_model, d_model]`` matrix of rank at most
``d_head``; multiplying it out wastes memory (``d_model**2`` per head) and hides the low rank.
Kept as ``A [..., ldim, mdim]`` and ``B [..., mdim, rdim]``, the things one wants from it stay
cheap because they only need ``mdim x mdim`` work:

* ``eigenvalues``: the non-zero eigenvalues of ``AB`` are those of ``BA`` (``[mdim, mdim]``):
  if ``ABv = lv`` with ``l != 0`` then ``BA(Bv) = l(Bv)`` and ``Bv != 0``.
* ``svd()``: with thin QR decompositions ``A = Qa Ra`` and ``B.T = Qb Rb``,
  ``AB = Qa (Ra Rb.T) Qb.T``; the small core ``Ra Rb.T`` is decomposed and its singular
  vectors carried out by ``Qa`` and ``Qb``, whose columns are orthonormal.
* ``norm()``: the Frobenius norm is the root of the sum of squared singular values.

Leading axes (layer, head) are batch axes: ``model.OV[layer, head]`` is one head's circuit.
The interface follows TransformerLens's ``FactoredMatrix`` (same names and conventions, so its
tutorials run unchanged; in particular ``svd()`` returns ``U, S, Vh`` with ``AB = U diag(S) Vh.T``,
``Vh`` holding the right singular vectors as columns). Written here from the algebra above.

Half-precision factors are decomposed in float32 (torch has no bf16 SVD or eigensolver).

Imports: torch only.
"""

from __future__ import annotations

from functools import cached_property

import torch


def _decomposable(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class FactoredMatrix:
    """``A @ B`` without multiplying it out: ``A [..., ldim, mdim]``, ``B [..., mdim, rdim]``."""

    def __init__(self, A: torch.Tensor, B: torch.Tensor) -> None:
        if A.ndim < 2 or B.ndim < 2:
            raise ValueError(f"FactoredMatrix factors need at least 2 axes, got A {tuple(A.shape)}, B {tuple(B.shape)}")
        if A.shape[-1] != B.shape[-2]:
            raise ValueError(f"FactoredMatrix: A {tuple(A.shape)} and B {tuple(B.shape)} do not chain "
                             f"(A's last axis must equal B's second-to-last)")
        batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        self.A = A.broadcast_to(batch + A.shape[-2:])
        self.B = B.broadcast_to(batch + B.shape[-2:])

    # ---- shape ---------------------------------------------------------------------------
    @property
    def ldim(self) -> int:
        return self.A.shape[-2]

    @property
    def mdim(self) -> int:
        return self.A.shape[-1]

    @property
    def rdim(self) -> int:
        return self.B.shape[-1]

    @property
    def shape(self) -> torch.Size:
        """The shape of the full product ``[..., ldim, rdim]``."""
        return self.A.shape[:-2] + (self.ldim, self.rdim)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"FactoredMatrix: shape {tuple(self.shape)}, hidden dim {self.mdim}"

    # ---- the product and its relatives ------------------------------------------------------
    @property
    def AB(self) -> torch.Tensor:
        """The full product ``[..., ldim, rdim]`` (materialised: mind the memory)."""
        return self.A @ self.B

    @property
    def BA(self) -> torch.Tensor:
        """``B @ A`` ``[..., mdim, mdim]``: same non-zero eigenvalues as ``AB`` (needs ``ldim == rdim``)."""
        if self.ldim != self.rdim:
            raise ValueError(f"BA needs a square product; this one is {self.ldim} x {self.rdim}")
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        """The transpose ``(AB).T = B.T A.T``."""
        return FactoredMatrix(self.B.transpose(-2, -1), self.A.transpose(-2, -1))

    @property
    def pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.A, self.B

    # ---- decompositions (cached: the factors never change) ----------------------------------
    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``U [..., ldim, k]``, ``S [..., k]``, ``Vh [..., rdim, k]`` with ``AB = U @ diag(S) @ Vh.T``.

        ``k = min(ldim, mdim, rdim)``; ``S`` is in descending order. (``Vh`` holds the right
        singular vectors as columns, TransformerLens's convention: not ``torch.linalg.svd``'s.)
        """
        return self._svd

    @cached_property
    def _svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        A, B = _decomposable(self.A), _decomposable(self.B)
        Qa, Ra = torch.linalg.qr(A)  # A = Qa Ra, Qa's columns orthonormal
        Qb, Rb = torch.linalg.qr(B.transpose(-2, -1))  # B = Rb.T Qb.T
        core_U, S, core_Vt = torch.linalg.svd(Ra @ Rb.transpose(-2, -1), full_matrices=False)
        k = min(self.ldim, self.mdim, self.rdim)
        U = (Qa @ core_U)[..., :k]
        V = (Qb @ core_Vt.transpose(-2, -1))[..., :k]
        return U, S[..., :k], V

    @property
    def U(self) -> torch.Tensor:
        return self.svd()[0]

    @property
    def S(self) -> torch.Tensor:
        return self.svd()[1]

    @property
    def V(self) -> torch.Tensor:
        """Right singular vectors as columns, ``[..., rdim, k]``."""
        return self.svd()[2]

    @property
    def Vh(self) -> torch.Tensor:
        """The same as ``V`` (TransformerLens's older name, kept because its tutorials use it)."""
        return self.svd()[2]

    @cached_property
    def eigenvalues(self) -> torch.Tensor:
        """The ``mdim`` eigenvalues of ``BA`` (complex): the non-zero eigenvalues of ``AB``."""
        return torch.linalg.eigvals(_decomposable(self.BA))

    def norm(self) -> torch.Tensor:
        """Frobenius norm of ``AB``, ``[...]``."""
        return self.S.pow(2).sum(dim=-1).sqrt()

    def make_even(self) -> FactoredMatrix:
        """The same product with balanced factors ``U sqrt(S)`` and ``sqrt(S) Vh.T``."""
        U, S, V = self.svd()
        root = S.sqrt()
        return FactoredMatrix(U * root[..., None, :], root[..., :, None] * V.transpose(-2, -1))

    def collapse_l(self) -> torch.Tensor:
        """``diag(S) Vh.T`` ``[..., k, rdim]``: the product with its orthonormal left factor ``U`` dropped."""
        _, S, V = self.svd()
        return S[..., :, None] * V.transpose(-2, -1)

    def collapse_r(self) -> torch.Tensor:
        """``U diag(S)`` ``[..., ldim, k]``: the product with its orthonormal right factor dropped."""
        U, S, _ = self.svd()
        return U * S[..., None, :]

    def get_corner(self, k: int = 3) -> torch.Tensor:
        """The top-left ``k x k`` block of the product (of the first matrix of every batch axis)."""
        lead = (0,) * (self.ndim - 2)
        return (self.A[lead + (slice(0, k), slice(None))] @ self.B[lead + (slice(None), slice(0, k))])

    # ---- arithmetic ---------------------------------------------------------------------------
    def __matmul__(self, other: torch.Tensor | FactoredMatrix) -> torch.Tensor | FactoredMatrix:
        if isinstance(other, FactoredMatrix):
            # Keep the narrower hidden dimension of the two.
            if self.mdim <= other.mdim:
                return FactoredMatrix(self.A, (self.B @ other.A) @ other.B)
            return FactoredMatrix(self.A @ (self.B @ other.A), other.B)
        if other.ndim == 1:  # a vector: the result is a vector
            return self.A @ (self.B @ other)
        return FactoredMatrix(self.A, self.B @ other)

    def __rmatmul__(self, other: torch.Tensor) -> torch.Tensor | FactoredMatrix:
        if other.ndim == 1:
            return (other @ self.A) @ self.B
        return FactoredMatrix(other @ self.A, self.B)

    def __mul__(self, scalar: float | torch.Tensor) -> FactoredMatrix:
        if isinstance(scalar, torch.Tensor) and scalar.numel() != 1:
            raise ValueError("a FactoredMatrix can only be multiplied by a scalar (use @ for products)")
        return FactoredMatrix(self.A * scalar, self.B)

    __rmul__ = __mul__

    def __truediv__(self, scalar: float | torch.Tensor) -> FactoredMatrix:
        return self * (1.0 / scalar)

    # ---- indexing -----------------------------------------------------------------------------
    def __getitem__(self, index) -> FactoredMatrix:
        """Index batch axes (both factors), then rows (of A) and columns (of B).

        ``OV[3]`` is layer 3's heads, ``OV[3, 1]`` one head, ``full[rows, cols]`` the sub-matrix
        of those rows and those columns (each index selects independently, like ``AB[rows][:, cols]``).
        """
        if not isinstance(index, tuple):
            index = (index,)
        if any(i is None or i is Ellipsis for i in index):
            raise IndexError("FactoredMatrix indexing takes integers, slices or index tensors (no None or ...)")
        n_batch = self.ndim - 2
        if len(index) > self.ndim:
            raise IndexError(f"too many indices ({len(index)}) for a FactoredMatrix of shape {tuple(self.shape)}")
        batch, rest = index[:n_batch], index[n_batch:]
        A, B = self.A[batch], self.B[batch]
        # Integer batch indices drop axes; the row/column axes are always the last two.
        if len(rest) >= 1:
            A = A[..., rest[0], :] if not isinstance(rest[0], int) else A[..., rest[0]:rest[0] + 1, :]
        if len(rest) == 2:
            B = B[..., :, rest[1]] if not isinstance(rest[1], int) else B[..., :, rest[1]:rest[1] + 1]
        return FactoredMatrix(A, B)

    def unsqueeze(self, dim: int = 0) -> FactoredMatrix:
        """A new batch axis at ``dim`` (counted among the batch axes)."""
        if dim < 0:
            dim += self.ndim - 1
        if not 0 <= dim <= self.ndim - 2:
            raise IndexError(f"unsqueeze: dim must index the batch axes, got {dim}")
        return FactoredMatrix(self.A.unsqueeze(dim), self.B.unsqueeze(dim))
