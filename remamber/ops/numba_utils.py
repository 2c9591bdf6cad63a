"""Numba building blocks shared by the CPU kernels (:mod:`remamber.ops.scan_cpu`,
:mod:`remamber.ops.ss2d_cpu`, :mod:`remamber.ops.winograd`): the cached ``jit`` decorator, a
per-function 512-bit vector hint, and float32 ``exp2`` / ``exp`` / ``softplus`` / ``sigmoid`` by
polynomials, so that the loops that use them vectorise (no libm calls).

``AVAILABLE`` says whether numba imports; without it the kernels' modules fall back to PyTorch.
"""

from __future__ import annotations

import numpy as np

try:
    import numba
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency; keep the package importable anyway
    numba = None

AVAILABLE = numba is not None


def jit(**options):
    """``njit`` with an on-disk cache when one can be written (read-only installs compile each run)."""

    def wrap(fn):
        try:
            return njit(cache=True, error_model="numpy", **options)(fn)
        except RuntimeError:  # numba found no writable cache location
            return njit(cache=False, error_model="numpy", **options)(fn)

    return wrap


def use_scalef() -> bool:
    """Whether the kernels' exp2 applies 2**k with ``llvm.ldexp``: where numba's target (the host,
    or NUMBA_CPU_FEATURES; ``NUMBA_CPU_NAME=generic`` has none, ``NUMBA_ENABLE_AVX=0`` drops AVX)
    has AVX-512F and AVX-512VL and its LLVM lowers that intrinsic to ``vscalefps`` (LLVM 22 on;
    earlier ones call libm's ``ldexpf`` per element, which stops the loops vectorising)."""
    from llvmlite import binding
    from numba.core import codegen, config

    if binding.llvm_version_info < (22,):
        return False
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else codegen.get_host_cpu_features()
    return {"+avx512f", "+avx512vl"} <= set(features.split(","))


if AVAILABLE:
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic

    @intrinsic
    def as_float32(typingctx, bits):  # pragma: no cover - compiled
        """The float32 whose bit pattern is the low 32 bits of the integer ``bits`` (no memory)."""
        if not isinstance(bits, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            value = args[0]
            if bits.bitwidth > 32:
                value = builder.trunc(value, ir.IntType(32))
            return builder.bitcast(value, ir.FloatType())

        return types.float32(bits), codegen

    @intrinsic
    def prefer_512_bit_vectors(typingctx):  # pragma: no cover - compiled
        """Let LLVM vectorise the function this is called in with 512-bit registers where the CPU
        has them (a per-function ``prefer-vector-width``; LLVM's tuning for recent Intel CPUs
        prefers 256 bits): the d_state 1 forward gains from it (BENCHMARKS.md, "Selective scan");
        numba's process-wide switch would also slow the backward down."""

        def codegen(context, builder, signature, args):
            # llvmlite validates only its known attribute names; a key-value string attribute is
            # written to the IR as it is, and LLVM ignores one it does not use
            set.add(builder.function.attributes, '"prefer-vector-width"="512"')
            return context.get_dummy_value()

        return types.none(), codegen

    def call_llvm(builder, name: str, signature, args):
        """Call the LLVM intrinsic ``name`` with the numba ``signature``'s float32/int32 types."""
        lltype = {types.float32: ir.FloatType(), types.int32: ir.IntType(32)}
        fnty = ir.FunctionType(lltype[signature.return_type], [lltype[t] for t in signature.args])
        return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), args)

    @intrinsic
    def rint(typingctx, x):  # pragma: no cover - compiled
        """``x`` rounded to the nearest integer (``llvm.rint``: one vector instruction, no libm)."""
        return types.float32(types.float32), lambda context, builder, sig, args: call_llvm(
            builder, "llvm.rint.f32", sig, args
        )

    @intrinsic
    def ldexp(typingctx, x, k):  # pragma: no cover - compiled
        """``x * 2**k`` (``llvm.ldexp``; only where :func:`use_scalef` says it is one instruction)."""
        return types.float32(types.float32, types.int32), lambda context, builder, sig, args: call_llvm(
            builder, "llvm.ldexp.f32.i32", sig, args
        )

    # exp2(x) = p(f) * 2**k, x = k + f with |f| <= 1/2: p a degree-6 fit of 2**f (fit error 1.5e-8,
    # ~1e-7 with the rounding of its float32 evaluation); no libm call, so every loop that uses it
    # vectorises (SIMD). exp(x) = exp2(x log2(e)): the rounding of x log2(e) adds a relative error of
    # up to ~|x| 4e-8 (3.8e-6 near x = -87, where exp(x) is 1.6e-38), as the reference's own rounding
    # of delta * A does. A decay exp(delta a) is exp2(delta a2), a2 = a log2(e) hoisted out of the
    # per-step loops.
    LOG2E = np.float32(1.4426950408889634)
    EXP2_COEFFS = tuple(
        np.float32(c)
        for c in (
            1.5345800784416497e-04,
            1.3399932067841291e-03,
            9.618489071726799e-03,
            5.550328642129898e-02,
            0.24022646248340607,
            0.6931471824645996,
        )
    )
    # log1p(w) = s q(s^2), s = w / (2 + w) in [0, 1/3]: q a degree-4 fit of 2 atanh(s) / s (fit error
    # 5e-9; ~2e-7 with float32 rounding, the float32 limit of the series too)
    LOG1P_COEFFS = tuple(
        np.float32(2 * c)
        for c in (
            0.14089155197143555,
            0.13980305194854736,
            0.20012454688549042,
            0.3333315849304199,
            1.0,
        )
    )

    @jit(inline="always", fastmath=True)
    def exp2_poly(f):  # pragma: no cover
        """2**f for |f| <= 1/2."""
        p = EXP2_COEFFS[0]
        for c in EXP2_COEFFS[1:]:
            p = p * f + c
        return p * f + np.float32(1.0)

    @jit(inline="always", fastmath=True)
    def exp2_scalef(x):  # pragma: no cover
        """exp2 with 2**k applied by ``ldexp`` (one ``vscalefps``): 0 below the float range, inf
        above it; for AVX-512 targets. x is clamped to [-150, 128] so that k converts to int32 and
        -inf gives 0, not NaN."""
        x = min(max(x, np.float32(-150.0)), np.float32(128.0))
        k = rint(x)
        return ldexp(exp2_poly(x - k), np.int32(k))

    @jit(inline="always", fastmath=True)
    def exp2_bits(x):  # pragma: no cover
        """exp2 with 2**k built from float bits, x clamped to [-126, 127] (so ~1.2e-38 below the
        float range and ~1.7e38 above it, where the scalef variant gives 0 and inf): for other
        targets."""
        x = min(max(x, np.float32(-126.0)), np.float32(127.0))
        k = rint(x)
        return exp2_poly(x - k) * as_float32((np.int32(k) + np.int32(127)) << np.int32(23))

    fast_exp2 = exp2_scalef if use_scalef() else exp2_bits

    @jit(inline="always", fastmath=True)
    def fast_exp(x):  # pragma: no cover
        return fast_exp2(x * LOG2E)

    @jit(inline="always", fastmath=True)
    def log1p_unit(w):  # pragma: no cover
        """log(1 + w) for w in [0, 1]."""
        s = w / (np.float32(2.0) + w)
        s2 = s * s
        q = LOG1P_COEFFS[0]
        for c in LOG1P_COEFFS[1:]:
            q = q * s2 + c
        return s * q

    @jit(inline="always", fastmath=True)
    def fast_sigmoid(v):  # pragma: no cover
        return np.float32(1.0) / (np.float32(1.0) + fast_exp(-v))

    @jit(inline="always", fastmath=True)
    def fast_softplus(v, e):  # pragma: no cover
        """``softplus(v) = max(v, 0) + log1p(e)``, given ``e = exp(-|v|)``."""
        return max(v, np.float32(0.0)) + log1p_unit(e)
