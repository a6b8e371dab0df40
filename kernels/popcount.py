"""Population-count primitives for the bitwise runtime.

Numba has no CPU popcount of its own (``np.bitwise_count`` and ``int.bit_count`` do not
compile in nopython mode), so this module emits LLVM's ``llvm.ctpop`` directly through
``numba.extending.intrinsic``:

* :func:`popcount64` - scalar popcount of one 64-bit word (``popcnt``).
* :func:`make_xor_popcount_tile` - builds the inner block of the binary convolution: for a
  tile of ``P`` output pixels and 8 consecutive output channels it sums
  ``popcount(activation_word XOR weight_word)`` over all ``KH x KW`` taps and all channel
  words, keeping the ``P`` accumulators in 512-bit registers (``<8 x i64>`` vectors, one
  ``vpxorq`` + ``vpopcntq`` + ``vpaddq`` per 512 bit-products on AVX-512 VPOPCNTDQ). The
  vector width is written explicitly in the IR because LLVM's loop vectoriser prefers
  256-bit vectors on recent Intel cores, which halves the popcount throughput.
* :func:`make_neg_bits64` - packs 64 sign bits ``x[i] - shift[i] < 0`` into one word with a
  single vector compare (``vcmpps`` into mask registers).

Each intrinsic has a plain-Python twin with identical semantics that is used when
``NUMBA_DISABLE_JIT=1`` (intrinsics cannot run in pure Python), so the jitted kernels stay
testable in that mode.

:func:`popcount_ref` is the NumPy reference popcount used by the ``*_ref`` functions.
"""
import numpy as np
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic
from llvmlite import ir

__all__ = ["popcount64", "popcount_ref", "make_xor_popcount_tile", "make_neg_bits64", "TILE_LANES"]

#: Output channels handled by one tile call (one 512-bit vector of uint64 accumulators).
TILE_LANES = 8

_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount_ref(a):
    """Number of set bits of every element of the unsigned integer array ``a`` (as int64)."""
    a = np.asarray(a)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(a).astype(np.int64)
    as_bytes = np.ascontiguousarray(a).view(np.uint8).reshape(a.shape + (a.dtype.itemsize,))
    return _BYTE_POPCOUNT[as_bytes].sum(axis=-1, dtype=np.int64)


_JIT_DISABLED = bool(config.DISABLE_JIT)

_I64 = ir.IntType(64)
_I32 = ir.IntType(32)


def _as_intp(context, builder, value, ty):
    return context.cast(builder, value, ty, types.intp)


def _is_c_array(ty, dtype=None, ndim=None):
    return (isinstance(ty, types.Array) and ty.layout == "C"
            and (dtype is None or ty.dtype == dtype) and (ndim is None or ty.ndim == ndim))


# --------------------------------------------------------------------------- scalar popcount
if _JIT_DISABLED:
    def popcount64(x):
        """Number of set bits of the 64-bit word ``x`` (pure-Python twin of the intrinsic)."""
        return np.uint64(bin(int(x) & 0xFFFFFFFFFFFFFFFF).count("1"))
else:
    @intrinsic
    def popcount64(typingctx, x):
        """Number of set bits of the 64-bit word ``x`` (``llvm.ctpop.i64``), as uint64."""
        if not isinstance(x, types.Integer):
            return None
        sig = types.uint64(x)

        def codegen(context, builder, signature, args):
            word = context.cast(builder, args[0], signature.args[0], types.uint64)
            return builder.ctpop(word)

        return sig, codegen


# --------------------------------------------------------------------------- xor-popcount tile
def _tile_python(P, KH, KW, n_lanes):
    def tile(x, w, dots, m0, iy, ix, sx, o0, K):
        lanes = slice(o0, o0 + n_lanes)
        for p in range(P):
            total = np.zeros(n_lanes, dtype=np.int64)
            for ky in range(KH):
                for kx in range(KW):
                    a = x[iy + ky, ix + p * sx + kx, :]
                    total += popcount_ref(a[:, None] ^ w[ky, kx, :, lanes]).sum(axis=0)
            dots[m0 + p, lanes] = (K - 2 * total).astype(np.float32)
    return tile


def make_xor_popcount_tile(P, KH, KW, lanes=TILE_LANES):
    """Build ``tile(x, w, dots, m0, iy, ix, sx, o0, K)`` for ``P`` pixels and a ``KH x KW`` kernel.

    Arguments (all arrays C-contiguous):

    * ``x``: uint64 ``(Hx, Wx, CW)`` packed activations (already padded if the conv pads).
    * ``w``: uint64 ``(KH, KW, CW, Opad)`` packed weights, ``Opad`` a multiple of ``lanes``.
    * ``dots``: float32 ``(rows, Opad)`` output buffer; pixel ``p`` goes to row ``m0 + p``.
    * ``iy``, ``ix``: top-left corner in ``x`` of pixel 0's window; ``sx``: column step
      between consecutive pixels of the tile (the conv stride); ``o0``: first of the
      ``lanes`` output channels (a multiple of ``lanes``); ``K``: number of valid binary
      products.

    Computes, for ``p < P`` and ``o0 <= o < o0 + lanes``, the ±1 dot product (exact in float32
    for ``K < 2**24``)::

        n = sum_{ky, kx, cw} popcount(x[iy + ky, ix + p*sx + kx, cw] ^ w[ky, kx, cw, o])
        dots[m0 + p, o] = float32(K - 2 * n)

    No bounds are checked: the caller guarantees every index is inside the arrays.
    """
    if _JIT_DISABLED:
        return _tile_python(P, KH, KW, lanes)

    vec = ir.VectorType(_I64, lanes)
    fvec = ir.VectorType(ir.FloatType(), lanes)
    zero_mask = ir.Constant(ir.VectorType(_I32, lanes), None)

    @intrinsic
    def tile(typingctx, x, w, dots, m0, iy, ix, sx, o0, K):
        if not (_is_c_array(x, types.uint64, 3) and _is_c_array(w, types.uint64, 4)
                and _is_c_array(dots, types.float32, 2)):
            return None
        if not all(isinstance(t, types.Integer) for t in (m0, iy, ix, sx, o0, K)):
            return None
        sig = types.void(x, w, dots, m0, iy, ix, sx, o0, K)

        def codegen(context, builder, signature, args):
            xa = context.make_array(signature.args[0])(context, builder, args[0])
            wa = context.make_array(signature.args[1])(context, builder, args[1])
            aa = context.make_array(signature.args[2])(context, builder, args[2])
            _, wx_len, n_words = cgutils.unpack_tuple(builder, xa.shape, 3)
            opad = cgutils.unpack_tuple(builder, wa.shape, 4)[3]
            acc_row = cgutils.unpack_tuple(builder, aa.shape, 2)[1]
            m0_, iy_, ix_, sx_, o0_, k_ = [_as_intp(context, builder, v, t)
                                           for v, t in zip(args[3:], signature.args[3:])]
            ctpop = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vec, [vec]), "llvm.ctpop.v%di64" % lanes)
            undef = ir.Constant(vec, ir.Undefined)
            accs = [cgutils.alloca_once_value(builder, ir.Constant(vec, None)) for _ in range(P)]

            def const(v):
                return ir.Constant(_I64, v)

            with cgutils.for_range(builder, n_words) as loop:
                cw = loop.index
                for ky in range(KH):
                    row = builder.mul(builder.add(iy_, const(ky)), wx_len)
                    for kx in range(KW):
                        w_idx = builder.add(
                            builder.mul(builder.add(builder.mul(const(ky * KW + kx), n_words), cw), opad), o0_)
                        w_ptr = builder.bitcast(builder.gep(wa.data, [w_idx]), vec.as_pointer())
                        w_vec = builder.load(w_ptr, align=8)
                        for p in range(P):
                            col = builder.add(builder.add(ix_, builder.mul(sx_, const(p))), const(kx))
                            x_idx = builder.add(builder.mul(builder.add(row, col), n_words), cw)
                            word = builder.load(builder.gep(xa.data, [x_idx]))
                            splat = builder.shuffle_vector(
                                builder.insert_element(undef, word, ir.Constant(_I32, 0)), undef, zero_mask)
                            count = builder.call(ctpop, [builder.xor(splat, w_vec)])
                            builder.store(builder.add(builder.load(accs[p]), count), accs[p])
            k_splat = builder.shuffle_vector(
                builder.insert_element(undef, k_, ir.Constant(_I32, 0)), undef, zero_mask)
            for p in range(P):
                dot = builder.sub(k_splat, builder.shl(builder.load(accs[p]), ir.Constant(vec, [1] * lanes)))
                idx = builder.add(builder.mul(builder.add(m0_, const(p)), acc_row), o0_)
                ptr = builder.bitcast(builder.gep(aa.data, [idx]), fvec.as_pointer())
                builder.store(builder.sitofp(dot, fvec), ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


# --------------------------------------------------------------------------- sign-bit packing
def _neg_bits64_python(x, x_off, shift, s_off):
    xs = x.reshape(-1)[x_off:x_off + 64]
    neg = (xs - shift[s_off:s_off + 64]) < 0
    return np.uint64(int(np.sum(neg.astype(np.uint64) << np.arange(64, dtype=np.uint64))))


def make_neg_bits64():
    """Build ``neg_bits64(x, x_off, shift, s_off) -> uint64``.

    ``x`` is any C-contiguous float32 array read as flat memory, ``shift`` a 1-D
    C-contiguous float32 array. Bit ``b`` (0..63) of the result is
    ``x.flat[x_off + b] - shift[s_off + b] < 0`` evaluated in float32 (so NaN gives 0 and
    -0.0 gives 0). All 64 elements must exist; no bounds are checked.
    """
    if _JIT_DISABLED:
        return _neg_bits64_python

    fvec = ir.VectorType(ir.FloatType(), 64)

    @intrinsic
    def neg_bits64(typingctx, x, x_off, shift, s_off):
        if not (_is_c_array(x, types.float32) and _is_c_array(shift, types.float32, 1)):
            return None
        if not (isinstance(x_off, types.Integer) and isinstance(s_off, types.Integer)):
            return None
        sig = types.uint64(x, x_off, shift, s_off)

        def codegen(context, builder, signature, args):
            xa = context.make_array(signature.args[0])(context, builder, args[0])
            sa = context.make_array(signature.args[2])(context, builder, args[2])
            xo = _as_intp(context, builder, args[1], signature.args[1])
            so = _as_intp(context, builder, args[3], signature.args[3])
            xv = builder.load(builder.bitcast(builder.gep(xa.data, [xo]), fvec.as_pointer()), align=4)
            sv = builder.load(builder.bitcast(builder.gep(sa.data, [so]), fvec.as_pointer()), align=4)
            neg = builder.fcmp_ordered("<", builder.fsub(xv, sv), ir.Constant(fvec, None))
            return builder.bitcast(neg, _I64)

        return sig, codegen

    return neg_bits64
