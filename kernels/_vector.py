"""Explicit-vector LLVM IR for the conv epilogue (one 64-channel word at a time).

LLVM's loop vectoriser splits the fused epilogue loop into 128-bit pieces on this kind of
CPU (it prefers 256-bit vectors on Intel, and the 64-bit lanes of the bit repack halve that
again). :func:`make_epilogue64` writes the same float32 operations on ``<64 x float>``
vectors with masked loads and stores instead, which become four 512-bit registers, and
builds the packed sign word with one vector compare; large aligned outputs are written with
streaming stores. The arithmetic is IEEE float32 without
fast-math flags, in the documented order, so the results are bit-identical to the scalar
code and to the NumPy reference.
"""
import numpy as np
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic
from llvmlite import ir

_I64 = ir.IntType(64)

__all__ = ["make_epilogue64", "abs_sum64_ref", "make_store_fence", "make_fma_tile", "make_conv_fma_tile"]

_LANES = 64


def _epilogue64_python(src, src_off, mul, bias, ob, n, sc, cs, res, res_off, use_res, slope, out, out_off, stream,
                       ns, ns_off):
    lanes = slice(ob, ob + n)
    v = src.reshape(-1)[src_off:src_off + n] * mul[lanes] + bias[lanes]
    v = v * sc
    v = v * cs[lanes]
    if use_res:
        v = v + res.reshape(-1)[res_off:res_off + n]
    v = np.where(v >= 0, v, v * slope).astype(np.float32)
    out.reshape(-1)[out_off:out_off + n] = v
    neg = (v - ns[ns_off:ns_off + n]) < 0
    return np.uint64(int(np.sum(neg.astype(np.uint64) << np.arange(n, dtype=np.uint64)))), v


def abs_sum64_ref(v):
    """float64 sum of ``|v|`` over up to 64 float32 lanes, in the tree order of the jitted
    epilogue: the lanes (zero-padded to 64) are halved and added pairwise, 32+32, 16+16, ..."""
    d = np.zeros(_LANES, np.float64)
    d[:len(v)] = np.abs(np.asarray(v, np.float32))
    while len(d) > 1:
        half = len(d) // 2
        d = d[:half] + d[half:]
    return float(d[0])


def _epilogue64_abs_python(src, src_off, mul, bias, ob, n, sc, cs, res, res_off, use_res, slope, out, out_off,
                           stream, ns, ns_off, sums, sums_off):
    word, v = _epilogue64_python(src, src_off, mul, bias, ob, n, sc, cs, res, res_off, use_res, slope, out, out_off,
                                 stream, ns, ns_off)
    sums.reshape(-1)[sums_off] += abs_sum64_ref(v)
    return word


def make_epilogue64(abs_sums=False):
    """Build ``epilogue64(src, src_off, mul, bias, ob, n, sc, cs, res, res_off, use_res,
    slope, out, out_off, stream, ns, ns_off) -> uint64``.

    For lanes ``l < n`` (``n <= 64``), with ``c = ob + l`` the channel and every array read
    as flat C-contiguous float32 memory::

        v = src[src_off + l] * mul[c] + bias[c];  v *= sc;  v *= cs[c]
        if use_res: v += res[res_off + l]
        v = v if v >= 0 else v * slope;  out[out_off + l] = v

    and returns the word whose bit ``l`` is ``v - ns[ns_off + l] < 0`` (bits ``>= n`` are 0). Lanes
    ``>= n`` touch no memory. No bounds are checked. If ``stream`` is true, a full word
    (``n == 64``) whose destination is 64-byte aligned is stored with non-temporal stores.

    With ``abs_sums=True`` it takes two more arguments, ``sums`` (float64, flat) and
    ``sums_off``, and also adds the sum of ``|v|`` over the lanes, computed in float64 from the
    registers in the tree order of :func:`abs_sum64_ref`, to ``sums[sums_off]`` (the input of
    the next layer's spatial re-scaling, without reading the stored values back).
    """
    if config.DISABLE_JIT:
        return _epilogue64_abs_python if abs_sums else (lambda *a: _epilogue64_python(*a)[0])

    f32 = ir.FloatType()
    i1, i32, i64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
    fvec = ir.VectorType(f32, _LANES)
    mvec = ir.VectorType(i1, _LANES)
    ivec = ir.VectorType(i32, _LANES)
    lane_ids = ir.Constant(ivec, list(range(_LANES)))
    splat_mask = ir.Constant(ivec, None)

    def f32_array(t):
        return isinstance(t, types.Array) and t.layout == "C" and t.dtype == types.float32

    def typer(src, src_off, mul, bias, ob, n, sc, cs, res, res_off, use_res, slope, out, out_off, stream, ns,
              ns_off, *extra):
        arrays = (src, mul, bias, cs, res, out, ns)
        ints = (src_off, ob, n, res_off, out_off, ns_off)
        if not all(f32_array(a) for a in arrays) or not all(isinstance(t, types.Integer) for t in ints):
            return None
        if not (isinstance(use_res, types.Boolean) and isinstance(stream, types.Boolean)
                and sc == types.float32 and slope == types.float32):
            return None
        if abs_sums and not (len(extra) == 2 and isinstance(extra[0], types.Array) and extra[0].layout == "C"
                             and extra[0].dtype == types.float64 and isinstance(extra[1], types.Integer)):
            return None
        return types.uint64(src, src_off, mul, bias, ob, n, sc, cs, res, res_off, use_res, slope, out, out_off,
                            stream, ns, ns_off, *extra)

    if abs_sums:
        @intrinsic
        def epilogue64(typingctx, src, src_off, mul, bias, ob, n, sc, cs, res, res_off, use_res, slope, out,
                       out_off, stream, ns, ns_off, sums, sums_off):
            sig = typer(src, src_off, mul, bias, ob, n, sc, cs, res, res_off, use_res, slope, out, out_off, stream,
                        ns, ns_off, sums, sums_off)
            return None if sig is None else (sig, codegen)
    else:
        @intrinsic
        def epilogue64(typingctx, src, src_off, mul, bias, ob, n, sc, cs, res, res_off, use_res, slope, out,
                       out_off, stream, ns, ns_off):
            sig = typer(src, src_off, mul, bias, ob, n, sc, cs, res, res_off, use_res, slope, out, out_off, stream,
                        ns, ns_off)
            return None if sig is None else (sig, codegen)

    # the code generator, shared by both signatures
    def codegen(context, builder, signature, args):
        (a_src, a_src_off, a_mul, a_bias, a_ob, a_n, a_sc, a_cs, a_res, a_res_off, a_use_res, a_slope,
         a_out, a_out_off, a_stream, a_ns, a_ns_off) = args[:17]
        tys = signature.args

        def data(i, value):
            return context.make_array(tys[i])(context, builder, value).data

        def idx(i, value):
            return context.cast(builder, value, tys[i], types.intp)

        module = builder.module
        load_fn = cgutils.get_or_insert_function(
            module, ir.FunctionType(fvec, [fvec.as_pointer(), i32, mvec, fvec]), "llvm.masked.load.v64f32.p0")
        store_fn = cgutils.get_or_insert_function(
            module, ir.FunctionType(ir.VoidType(), [fvec, fvec.as_pointer(), i32, mvec]),
            "llvm.masked.store.v64f32.p0")
        undef = ir.Constant(fvec, ir.Undefined)

        def splat(value):
            one = builder.insert_element(undef, value, ir.Constant(i32, 0))
            return builder.shuffle_vector(one, undef, splat_mask)

        n32 = builder.trunc(idx(5, a_n), i32)
        n_splat = builder.shuffle_vector(
            builder.insert_element(ir.Constant(ivec, ir.Undefined), n32, ir.Constant(i32, 0)),
            ir.Constant(ivec, ir.Undefined), splat_mask)
        mask = builder.icmp_unsigned("<", lane_ids, n_splat)
        zero = ir.Constant(fvec, None)

        def load(ptr_data, offset, lane_mask, fill):
            ptr = builder.bitcast(builder.gep(ptr_data, [offset]), fvec.as_pointer())
            return builder.call(load_fn, [ptr, ir.Constant(i32, 4), lane_mask, fill])

        ob_ = idx(4, a_ob)
        v = builder.fmul(load(data(0, a_src), idx(1, a_src_off), mask, zero), load(data(2, a_mul), ob_, mask, zero))
        v = builder.fadd(v, load(data(3, a_bias), ob_, mask, zero))
        v = builder.fmul(v, splat(a_sc))
        v = builder.fmul(v, load(data(7, a_cs), ob_, mask, zero))
        # A real branch, not a masked load with an all-false mask: that would still form
        # an address far outside the (empty) dummy residual, and a masked-off access to
        # an unmapped page costs a microcode assist on every call.
        use = builder.icmp_unsigned("!=", context.cast(builder, a_use_res, tys[10], types.uint8),
                                    ir.Constant(ir.IntType(8), 0))
        before = builder.block
        with builder.if_then(use, likely=False):
            with_res = builder.fadd(v, load(data(8, a_res), idx(9, a_res_off), mask, zero))
            res_block = builder.block
        merged = builder.phi(fvec)
        merged.add_incoming(v, before)
        merged.add_incoming(with_res, res_block)
        v = merged
        keep = builder.fcmp_ordered(">=", v, zero)
        v = builder.select(keep, v, builder.fmul(v, splat(a_slope)))
        out_ptr = builder.bitcast(builder.gep(data(12, a_out), [idx(13, a_out_off)]), fvec.as_pointer())
        streaming = builder.and_(
            builder.icmp_unsigned("!=", context.cast(builder, a_stream, tys[14], types.uint8),
                                  ir.Constant(ir.IntType(8), 0)),
            builder.and_(builder.icmp_unsigned("==", n32, ir.Constant(i32, _LANES)),
                         builder.icmp_unsigned("==", builder.and_(builder.ptrtoint(out_ptr, i64),
                                                                  ir.Constant(i64, 63)), ir.Constant(i64, 0))))
        with builder.if_else(streaming, likely=True) as (then, otherwise):
            with then:
                store = builder.store(v, out_ptr, align=64)
                store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(i32, 1)]))
            with otherwise:
                builder.call(store_fn, [v, out_ptr, ir.Constant(i32, 4), mask])
        neg = builder.fcmp_ordered("<", builder.fsub(v, load(data(15, a_ns), idx(16, a_ns_off), mask, zero)),
                                   zero)
        if abs_sums:  # masked lanes of v are 0
            fabs = cgutils.get_or_insert_function(module, ir.FunctionType(fvec, [fvec]), "llvm.fabs.v64f32")
            d = builder.fpext(builder.call(fabs, [v]), ir.VectorType(ir.DoubleType(), _LANES))
            width = _LANES
            while width > 1:
                width //= 2
                lo = builder.shuffle_vector(d, d, ir.Constant(ir.VectorType(i32, width), list(range(width))))
                hi = builder.shuffle_vector(d, d, ir.Constant(ir.VectorType(i32, width),
                                                              list(range(width, 2 * width))))
                d = builder.fadd(lo, hi)
            total = builder.extract_element(d, ir.Constant(i32, 0))
            sum_ptr = builder.gep(data(17, args[17]), [idx(18, args[18])])
            builder.store(builder.fadd(builder.load(sum_ptr), total), sum_ptr)
        return builder.bitcast(builder.and_(neg, mask), i64)

    return epilogue64


def make_store_fence():
    """Build ``store_fence()``: ``sfence`` on x86 (orders the weakly-ordered streaming stores
    before whatever signals the end of the work to other threads), a no-op elsewhere."""
    if config.DISABLE_JIT:
        return lambda: None

    @intrinsic
    def store_fence(typingctx):
        sig = types.void()

        def codegen(context, builder, signature, args):
            if "x86" in builder.module.triple or "i686" in builder.module.triple:
                fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                    "llvm.x86.sse.sfence")
                builder.call(fn, [])
            return context.get_dummy_value()

        return sig, codegen

    return store_fence


def _fma_tile_python(P, NV):
    def tile(x, wk, z, m0, j0):
        cols = slice(j0, j0 + 16 * NV)
        block = x[m0:m0 + P].astype(np.float64) @ wk[:, cols].astype(np.float64)
        z[m0:m0 + P, cols] = block.astype(np.float32)
    return tile


def make_fma_tile(P, NV):
    """Build ``tile(x, wk, z, m0, j0)``, the register-blocked micro-kernel of a GEMM with
    few columns: for ``p < P`` and the ``16*NV`` columns ``j0 <= j < j0 + 16*NV``::

        z[m0 + p, j] = sum_c x[m0 + p, c] * wk[c, j]      (c in order, fused multiply-adds)

    ``x`` float32 ``(M, C)``, ``wk`` float32 ``(C, Npad)``, ``z`` float32 ``(M, Npad)``, all
    C-contiguous, ``Npad`` a multiple of ``16*NV``; no bounds are checked. The ``P*NV``
    accumulators stay in 512-bit registers over the whole ``c`` loop. (OpenBLAS handles
    such a GEMM poorly: 27 columns ran about 3x slower than this, and far slower again
    with two threads on a busy machine.)
    """
    if config.DISABLE_JIT:
        return _fma_tile_python(P, NV)

    f32, i32 = ir.FloatType(), ir.IntType(32)
    vec = ir.VectorType(f32, 16)
    splat_mask = ir.Constant(ir.VectorType(i32, 16), None)

    def f32_2d(t):
        return isinstance(t, types.Array) and t.layout == "C" and t.dtype == types.float32 and t.ndim == 2

    @intrinsic
    def tile(typingctx, x, wk, z, m0, j0):
        if not (f32_2d(x) and f32_2d(wk) and f32_2d(z)):
            return None
        if not (isinstance(m0, types.Integer) and isinstance(j0, types.Integer)):
            return None
        sig = types.void(x, wk, z, m0, j0)

        def codegen(context, builder, signature, args):
            xa = context.make_array(signature.args[0])(context, builder, args[0])
            wa = context.make_array(signature.args[1])(context, builder, args[1])
            za = context.make_array(signature.args[2])(context, builder, args[2])
            n_c = cgutils.unpack_tuple(builder, xa.shape, 2)[1]
            n_w = cgutils.unpack_tuple(builder, wa.shape, 2)[1]
            n_z = cgutils.unpack_tuple(builder, za.shape, 2)[1]
            m0_ = context.cast(builder, args[3], signature.args[3], types.intp)
            j0_ = context.cast(builder, args[4], signature.args[4], types.intp)
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]),
                                                 "llvm.fma.v16f32")
            undef = ir.Constant(vec, ir.Undefined)
            accs = [[cgutils.alloca_once_value(builder, ir.Constant(vec, None)) for _ in range(NV)]
                    for _ in range(P)]

            def const(v):
                return ir.Constant(_I64, v)

            with cgutils.for_range(builder, n_c) as loop:
                c = loop.index
                w_row = builder.add(builder.mul(c, n_w), j0_)
                w_vecs = [builder.load(builder.bitcast(builder.gep(wa.data, [builder.add(w_row, const(16 * v))]),
                                                       vec.as_pointer()), align=4) for v in range(NV)]
                for p in range(P):
                    xv = builder.load(builder.gep(xa.data, [builder.add(builder.mul(builder.add(m0_, const(p)),
                                                                                    n_c), c)]))
                    splat = builder.shuffle_vector(builder.insert_element(undef, xv, ir.Constant(i32, 0)), undef,
                                                   splat_mask)
                    for v in range(NV):
                        builder.store(builder.call(fma, [splat, w_vecs[v], builder.load(accs[p][v])]), accs[p][v])
            for p in range(P):
                row = builder.add(builder.mul(builder.add(m0_, const(p)), n_z), j0_)
                for v in range(NV):
                    ptr = builder.bitcast(builder.gep(za.data, [builder.add(row, const(16 * v))]), vec.as_pointer())
                    builder.store(builder.load(accs[p][v]), ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


def _conv_tile_python(P, NV, KW, stride):
    def tile(x, w, z, m0, iy, ix, o0):
        lanes = slice(o0, o0 + 16 * NV)
        for p in range(P):
            acc = np.zeros(16 * NV, np.float64)
            for ky in range(3):
                for kx in range(KW):
                    xs = x[iy + ky, ix + p * stride + kx, :].astype(np.float64)
                    acc += xs @ w[ky, kx, :, lanes].astype(np.float64)
            z[m0 + p, lanes] = acc.astype(np.float32)
    return tile


def make_conv_fma_tile(P, NV, KW=3, stride=1):
    """Build ``tile(x, w, z, m0, iy, ix, o0)``, the register-blocked micro-kernel of a direct
    float convolution with 3 rows of taps and ``KW`` columns: for ``p < P`` and the ``16*NV``
    output lanes from ``o0``::

        z[m0 + p, o] = sum_{c, ky, kx < KW} x[iy + ky, ix + p*stride + kx, c] * w[ky, kx, c, o]

    (fused multiply-adds, ``c`` outermost). ``x`` float32 ``(Hx, Wx, C)`` (an already padded
    band of input rows), ``w`` float32 ``(3, KW, C, Opad)``, ``z`` float32 ``(rows, Opad)``, all
    C-contiguous, ``Opad`` a multiple of ``16*NV``; no bounds are checked. The ``P*NV``
    accumulators stay in 512-bit registers; each input value is loaded once per ``c`` and
    broadcast to every tap and pixel that uses it.

    A 3x3 conv is ``KW=3, stride=1``. With few output channels ``O``, ``G = 16/O`` pixels
    share one vector: ``stride=G``, ``KW=G+2`` and lane ``q*O + o`` of ``w[ky, u, c]`` holding
    the weight of output ``o`` at tap ``u - q`` (zero outside 0..2), so no lane is wasted.
    """
    if config.DISABLE_JIT:
        return _conv_tile_python(P, NV, KW, stride)

    f32, i32 = ir.FloatType(), ir.IntType(32)
    vec = ir.VectorType(f32, 16)
    splat_mask = ir.Constant(ir.VectorType(i32, 16), None)

    def f32_array(t, ndim):
        return isinstance(t, types.Array) and t.layout == "C" and t.dtype == types.float32 and t.ndim == ndim

    @intrinsic
    def tile(typingctx, x, w, z, m0, iy, ix, o0):
        if not (f32_array(x, 3) and f32_array(w, 4) and f32_array(z, 2)):
            return None
        if not all(isinstance(t, types.Integer) for t in (m0, iy, ix, o0)):
            return None
        sig = types.void(x, w, z, m0, iy, ix, o0)

        def codegen(context, builder, signature, args):
            xa = context.make_array(signature.args[0])(context, builder, args[0])
            wa = context.make_array(signature.args[1])(context, builder, args[1])
            za = context.make_array(signature.args[2])(context, builder, args[2])
            _, wx_len, n_c = cgutils.unpack_tuple(builder, xa.shape, 3)
            opad = cgutils.unpack_tuple(builder, wa.shape, 4)[3]
            n_z = cgutils.unpack_tuple(builder, za.shape, 2)[1]
            m0_, iy_, ix_, o0_ = [context.cast(builder, v, t, types.intp) for v, t in zip(args[3:], signature.args[3:])]
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]),
                                                 "llvm.fma.v16f32")
            undef = ir.Constant(vec, ir.Undefined)
            accs = [[cgutils.alloca_once_value(builder, ir.Constant(vec, None)) for _ in range(NV)]
                    for _ in range(P)]

            def const(v):
                return ir.Constant(_I64, v)

            with cgutils.for_range(builder, n_c) as loop:
                c = loop.index
                splats = {}
                for ky in range(3):
                    row = builder.mul(builder.add(iy_, const(ky)), wx_len)
                    for col in range((P - 1) * stride + KW):  # the input pixels the windows read on row ky
                        x_idx = builder.add(builder.mul(builder.add(row, builder.add(ix_, const(col))), n_c), c)
                        xv = builder.load(builder.gep(xa.data, [x_idx]))
                        splats[ky, col] = builder.shuffle_vector(
                            builder.insert_element(undef, xv, ir.Constant(i32, 0)), undef, splat_mask)
                    for kx in range(KW):
                        base = builder.add(builder.mul(builder.add(builder.mul(const(ky * KW + kx), n_c), c), opad),
                                           o0_)
                        w_vecs = [builder.load(builder.bitcast(builder.gep(wa.data, [builder.add(base, const(16 * v))]),
                                                               vec.as_pointer()), align=4) for v in range(NV)]
                        for p in range(P):
                            for v in range(NV):
                                builder.store(builder.call(fma, [splats[ky, p * stride + kx], w_vecs[v],
                                                                 builder.load(accs[p][v])]), accs[p][v])
            for p in range(P):
                row = builder.add(builder.mul(builder.add(m0_, const(p)), n_z), o0_)
                for v in range(NV):
                    ptr = builder.bitcast(builder.gep(za.data, [builder.add(row, const(16 * v))]), vec.as_pointer())
                    builder.store(builder.load(accs[p][v]), ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile
