"""The layout of PQ codes (faiss' `impl/CodePacker.h`): M codeword indices of nbits each per item.

A code is one codeword index per codebook, uint8 (N, M), packable to M * nbits bits.
"""

import numpy as np

from gpq_keras.config import check_positive_int


def code_size(num_subspaces, nbits):
    """Bytes per packed code: ceil(M * nbits / 8)."""
    return (num_subspaces * nbits + 7) // 8


def pack_codes(codes, nbits):
    """uint8 codes (N, M) -> packed uint8 (N, ceil(M*nbits/8)), M*nbits bits per item.

    The bit layout is faiss' `ProductQuantizer` layout (little-endian bit string: codebook m
    occupies bits [m*nbits, (m+1)*nbits) counted from the least significant bit of byte 0), so
    packed codes can be handed to a faiss `IndexPQ` as they are.
    """
    nbits = check_positive_int("nbits", nbits)
    if nbits > 8:
        raise ValueError(f"nbits must be in [1, 8]. Received: nbits={nbits}")
    codes = np.asarray(codes)
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(
            f"`codes` must be integers of shape (N, M). Received: {codes.dtype} {codes.shape}"
        )
    if codes.size and (codes.min() < 0 or codes.max() >= (1 << nbits)):
        raise ValueError(f"`codes` must be in [0, {1 << nbits}) for nbits={nbits}")
    n, num_subspaces = codes.shape
    bits = np.unpackbits(codes.astype(np.uint8)[..., None], axis=-1, bitorder="little")[..., :nbits]
    bits = bits.reshape(n, num_subspaces * nbits)
    return np.packbits(bits, axis=1, bitorder="little")


def unpack_codes(packed, num_subspaces, nbits):
    """Inverse of `pack_codes`: packed uint8 (N, ceil(M*nbits/8)) -> uint8 codes (N, M)."""
    nbits = check_positive_int("nbits", nbits)
    num_subspaces = check_positive_int("num_subspaces", num_subspaces)
    packed = np.asarray(packed)
    size = code_size(num_subspaces, nbits)
    if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != size:
        raise ValueError(
            f"packed codes must be uint8 of shape (N, {size}). "
            f"Received: {packed.dtype} {packed.shape}"
        )
    bits = np.unpackbits(packed, axis=1, bitorder="little")[:, : num_subspaces * nbits]
    bits = bits.reshape(packed.shape[0], num_subspaces, nbits)
    return np.packbits(bits, axis=-1, bitorder="little")[..., 0]


def unique_codes(codes, nbits):
    """The distinct codes of uint8 codes (N, M) and where each item's is -> (unique (U, M), inverse
    intp (N,)), or None when all N codes differ.

    Codes of M * nbits <= 63 bits are compared as one int64 each (faster than rows); the order of
    `unique` is then that of those ints, else NumPy's row order.
    """
    num_subspaces = codes.shape[1]
    if num_subspaces * nbits <= 63:
        packed = np.zeros(codes.shape[0], np.int64)
        for m in range(num_subspaces):
            packed = (packed << nbits) | codes[:, m]
        _, first, inverse = np.unique(packed, return_index=True, return_inverse=True)
        unique = codes[first]
    else:
        unique, inverse = np.unique(codes, axis=0, return_inverse=True)
    return None if len(unique) == len(codes) else (unique, inverse.reshape(-1))
