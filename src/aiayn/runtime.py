"""Every choice that depends on the machine (CPU or GPU, which CPU), in one place.

The blocks, models, trainer and decoders ask these functions and never test the device
themselves, the way timm keeps `use_fused_attn()` in one module. Each switch says what it was
measured on.

- device: `device(choice)` ("auto" is CUDA where there is one).
- precision: `resolve_precision`, `autocast`, `cpu_has_bf16`; for inference `inference_precision`
  (bf16 only where it measures faster), `int8_weight_levels` (int8 products without VNNI) and
  `int8_engine` (fbgemm or oneDNN, measured; AIAYN_INT8_ENGINE).
- matrix products: `onednn_inference` (AIAYN_GEMM=auto|mkl|onednn), `gemm_library`.
- attention kernels: `configure_attention` (cuDNN's kernel off on CUDA); `attention_spelled_out`
  (short attention on a CPU as two batched products and a softmax); `attention_in_fp32` (bf16 on a
  CPU runs the fused kernel in fp32), `decoding_attention_in_fp32` (bf16 decoding's KV cache) and
  `decoding_memory_dtype` (the encoder's keys and values for decoding: bf16 for int8 or bf16
  decoding on a CPU with bf16 units).
- padding: `skip_padding(device)` (position-wise work on the real tokens only, on the CPU).
- dropout: `int16_dropout(x)` (the CPU's cheaper keep-mask).
- memory: `reuse_freed_memory()` (glibc keeps large blocks on the heap, CPU training) and
  `release_freed_memory()` (gives freed pages back, data preparation).
- the record: `machine(threads)`, the CPU and versions a benchmark's figures were measured on.
- batch size: `default_max_tokens(device)` for decoding; `search_sync_every(device)`, how often a
  search asks the device which sentences are done; `beam_cache_per_sentence(device)`, the beam
  search's KV cache layout (AIAYN_BEAM_CACHE); `two_stage_topk(x)`, beam search's top-k over a
  large vocabulary.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that use it, so that data preparation can use this module without it

# ---------------------------------------------------------------- device


def device(choice: str | torch.device | None = "auto") -> torch.device:
    """The device for `choice`: "auto" (or None) is the first CUDA GPU where there is one, else the CPU."""
    import torch

    if choice is None or choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        where = torch.device(choice)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {choice!r}: expected auto, cpu, cuda or cuda:N") from None
    if where.type == "cuda" and not torch.cuda.is_available():
        built = "a build without CUDA" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, but no GPU is visible"
        raise ValueError(f"--device {choice}: this PyTorch ({torch.__version__}, {built}) cannot use CUDA; use --device cpu")
    if where.type == "cuda" and where.index is not None and where.index >= torch.cuda.device_count():
        raise ValueError(f"--device {choice}: there are {torch.cuda.device_count()} CUDA devices")
    return where


# ---------------------------------------------------------------- precision


def resolve_precision(precision: str, where: torch.device) -> str:
    """fp32, bf16 or fp16 for training on `where`. "auto" is bf16 on CUDA (fp16 where bf16 is
    missing); on a CPU bf16 where it multiplies bf16 natively (`cpu_has_bf16`), else fp32. Training
    steps on a 2-core AMD EPYC Zen 5 (AVX-512 BF16), bf16 autocast against fp32
    (benchmarks/precision_train.py): small 1.78×, gpt-tiny 1.68×, vit-tiny 1.92×, dit-tiny 1.62×,
    clip-tiny 1.76×, rnnsearch-tiny 1.04×, quickstart 0.82× (its recipe pins fp32); without bf16
    units bf16 runs at about 0.25× fp32."""
    import torch

    if precision == "auto":
        if where.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_bf16() else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"unknown precision {precision!r} (auto, fp32, bf16, fp16)")
    if precision == "fp16" and where.type != "cuda":
        raise ValueError("fp16 training needs CUDA; on a CPU use bf16 or fp32")
    return precision


def autocast(precision: str, where: torch.device):
    """torch.autocast for bf16/fp16, nothing for fp32 (and int8, whose products are the model's own)."""
    import torch

    if precision not in ("fp32", "bf16", "fp16", "int8"):
        raise ValueError(f"unknown precision {precision!r} (fp32, bf16, fp16 or int8)")
    if precision in ("fp32", "int8"):
        return contextlib.nullcontext()
    return torch.autocast(where.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def loss_block_rows(vocabulary: int, width: int, where: torch.device) -> int:
    """Rows of logits that train.loss.projected_label_smoothed_nll computes at a time: about 4M
    logits (16 MB in fp32) on a CPU, 32M on a GPU, and at least 4 × `width` (d_model) rows, since
    every block reads the [vocabulary, width] weight three times. On a 2-core AMD EPYC Zen 4
    (forward + backward, fp32 / bf16 ms): 2,040 × 128 → 8,000 words took 121 / 81 in blocks of 128
    rows, 102 / 62 in blocks of 512, against 133 / 104 for the logits whole; 2,048 × 512 → 32,000
    took 1,481 / 1,032 in blocks of 131 rows, 1,301 / 873 in one block of 2,048, against 1,354 / 975."""
    return max(1, (2**25 if where.type == "cuda" else 2**22) // vocabulary, 4 * width)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX), as oneDNN sees it. Where it
    does not, bf16 autocast runs at about 0.25× fp32 (2-core AMD EPYC, AVX2 only)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_has_vnni() -> bool:
    """Whether the CPU has an 8-bit dot product accumulating in int32 (AVX-512 VNNI, AVX-VNNI or AMX)."""
    flags = set(cpu_info("flags").split())
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def int8_weight_levels() -> int:
    """The largest magnitude of an int8 product's weight codes on this CPU. Without VNNI, fbgemm
    multiplies with vpmaddubsw, whose int16 sums of two u8·s8 products saturate at full range
    (2·255·127 > 32767): the weights then use 7 bits (±63, 2·255·63 < 32767) and the activations
    keep their 8, which measured more accurate than the usual 7-bit activations (relative error
    1.1% against 1.7% for a 16 × 512 × 2048 product of random weights, 1.9% against 3.4% with
    outlier features, on an AVX2 EPYC). With VNNI the products accumulate in int32 and both
    sides use 8 bits."""
    return 127 if cpu_has_vnni() else 63


def _fastest_call(call, repeats: int = 7) -> float:
    """The shortest of `repeats` timed calls (seconds), after one untimed call: the start-up
    measurements that choose a kernel by speed."""
    import time

    call()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return min(times)


_int8_engine_choice = os.environ.get("AIAYN_INT8_ENGINE", "auto").lower()


@functools.cache
def _resolve_int8_engine(choice: str) -> str:
    import warnings

    import torch

    engines = torch.backends.quantized.supported_engines
    if choice != "auto":
        if choice not in ("fbgemm", "onednn") or choice not in engines:
            raise ValueError(f"AIAYN_INT8_ENGINE={choice!r}: expected auto, or one of fbgemm and onednn that this PyTorch has ({engines})")
        return choice
    if "fbgemm" not in engines or "onednn" not in engines:
        return "fbgemm" if "fbgemm" in engines else torch.backends.quantized.engine
    codes = torch.randint(-127, 128, (2048, 512), dtype=torch.int8)
    scale, x = torch.full((2048,), 0.01, dtype=torch.double), torch.randn(32, 512)
    best = {}
    for engine in ("fbgemm", "onednn"):
        with quantized_engine(engine), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            weight = torch._make_per_channel_quantized_tensor(codes, scale, torch.zeros(2048, dtype=torch.long), 0)
            packed = torch.ops.quantized.linear_prepack(weight, None)
        best[engine] = _fastest_call(lambda packed=packed: torch.ops.quantized.linear_dynamic(x, packed, False))
    return "onednn" if best["onednn"] < 0.8 * best["fbgemm"] else "fbgemm"


def int8_engine() -> str:
    """Which of PyTorch's int8 GEMMs `nn.int8` packs its weights for: fbgemm, or oneDNN where a
    dynamic 32 × 512 → 2048 product measures at least 20% faster through it (a few ms, once). On
    a Xeon with AMX (2026-12-06) oneDNN took 170 µs against fbgemm's 234 µs for that product, and
    410 against 757 µs at 128 rows: it multiplies with AMX's int8 tiles. AIAYN_INT8_ENGINE=
    fbgemm|onednn|auto (default auto)."""
    return _resolve_int8_engine(_int8_engine_choice)


@contextlib.contextmanager
def _choice_as(variable: str, choice: str, check):
    """Within this block, the module's AIAYN_* choice held in `variable` is `choice`; `check()` asks
    the switch that reads it, which refuses a choice it does not know."""
    saved = globals()[variable]
    globals()[variable] = choice
    try:
        check()
        yield
    finally:
        globals()[variable] = saved


def int8_engine_as(choice: str):
    """Within this block, `nn.int8` packs for `choice` (auto, fbgemm or onednn) as AIAYN_INT8_ENGINE would."""
    return _choice_as("_int8_engine_choice", choice, int8_engine)


@contextlib.contextmanager
def quantized_engine(engine: str):
    """Within this block, torch.backends.quantized.engine is `engine` (int8 weights are packed for
    the engine current when they are packed, and keep it)."""
    import torch

    saved = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = saved


@functools.cache
def bf16_faster_on_cpu() -> bool:
    """Whether decoding's products run faster under bf16 autocast than in fp32 on this CPU,
    measured (a projection of 32 rows × 512 → 2048 through aiayn's Linear as decoding runs it,
    oneDNN included; a few ms) rather than guessed from the CPU's name; bf16 must win by 20%.
    On a 2-core AMD EPYC Zen 4 (AVX-512 BF16) the two were within 15% at this size and whole beam
    searches equal, so it answers no there; on an AVX2-only EPYC bf16 runs at about 0.25×."""

    import torch

    from aiayn.nn.linear import Linear

    if not cpu_has_bf16():
        return False
    layer, x = Linear(512, 2048).eval(), torch.randn(32, 512)

    with torch.no_grad():
        fp32 = _fastest_call(lambda: layer(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = _fastest_call(lambda: layer(x))
    return bf16 < 0.8 * fp32


def inference_precision(precision: str, where: torch.device) -> str:
    """fp32, bf16, fp16 or int8 for decoding on `where`. "auto": bf16 on CUDA (fp16 where bf16 is
    missing); on a CPU bf16 where `bf16_faster_on_cpu` measures it faster, else fp32. int8 is for
    the CPU only."""
    import torch

    if precision == "auto":
        if where.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if bf16_faster_on_cpu() else "fp32"
    if precision not in ("fp32", "bf16", "fp16", "int8"):
        raise ValueError(f"unknown precision {precision!r} (auto, fp32, bf16, fp16, int8)")
    if precision == "int8" and where.type != "cpu":
        raise ValueError("int8 decoding runs on the CPU; on a GPU use bf16 or fp16")
    return precision


# ---------------------------------------------------------------- matrix products (CPU)


@functools.cache
def cpu_info(field: str) -> str:
    """A field of /proc/cpuinfo for the first CPU ("vendor_id", "model name", ...); "" where unknown."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == field:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def machine(threads: int | None = None) -> dict:
    """What a benchmark's figures were measured on, for its results file: the CPU's model name,
    family and model numbers (`lscpu` prints the same), its vector and matrix flags (AVX*, AMX*,
    FMA, VNNI, BF16), the threads used, and the Python, platform and PyTorch versions."""
    import platform

    import torch

    vector = ("avx", "amx", "fma")
    info = {
        "cpu": cpu_info("model name") or platform.processor() or platform.machine(),
        "cpu_family": cpu_info("cpu family"),
        "cpu_model": cpu_info("model"),
        "flags": sorted({f for f in cpu_info("flags").split() if f.startswith(vector) or "vnni" in f or "bf16" in f}),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
    }
    if threads is not None:
        info["threads"] = threads
    return info


@functools.cache
def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN's linear kernel."""
    import torch

    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@functools.cache
def _resolve_gemm(choice: str) -> bool:
    if choice == "auto":
        return onednn_available() and cpu_info("vendor_id") not in ("GenuineIntel", "")
    if choice not in ("mkl", "onednn"):
        raise ValueError(f"AIAYN_GEMM={choice!r}: expected auto, mkl or onednn")
    if choice == "onednn" and not onednn_available():
        raise RuntimeError("AIAYN_GEMM=onednn, but this PyTorch build has no oneDNN linear kernel")
    return choice == "onednn"


_gemm_choice = os.environ.get("AIAYN_GEMM", "auto").lower()


def onednn_inference() -> bool:
    """Whether fp32 CPU products without gradients go through oneDNN rather than MKL.

    PyTorch's CPU build sends fp32 products to MKL, tuned for Intel's cores. On other x86 CPUs
    oneDNN is faster at the shapes of decoding: on a 2-core AMD EPYC, 128 × 512 × 1536 ran at 63
    GFLOP/s through oneDNN and 50 through MKL (CTranslate2 makes the same choice). For training
    both are within a few percent, so oneDNN serves only decoding and evaluation.
    AIAYN_GEMM=mkl|onednn|auto (default auto: oneDNN on CPUs that are not Intel's)."""
    return _resolve_gemm(_gemm_choice)


def gemm_library(choice: str):
    """Within this block, use `choice` (auto, mkl or onednn) as AIAYN_GEMM would."""
    return _choice_as("_gemm_choice", choice, onednn_inference)


# ---------------------------------------------------------------- attention kernels (CUDA)


def configure_attention(where: torch.device, allow_cudnn: bool = False) -> None:
    """Keep scaled_dot_product_attention off cuDNN's kernel on CUDA (process-wide) unless allowed.

    cuDNN builds an execution plan for each exact input shape (hundreds of ms each, then cached).
    Token-bucket batches meet a new shape nearly every update, and incremental decoding every
    step, so the flash and memory-efficient kernels serve better. On an H200 (bf16, Bible corpus,
    25k target tokens per update) `base` training ran at 118k tokens/s with cuDNN's kernel and
    719k without it."""
    import torch

    if where.type == "cuda" and not allow_cudnn and hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        torch.backends.cuda.enable_cudnn_sdp(False)


# ---------------------------------------------------------------- padding, dropout, memory


def skip_padding(where: torch.device) -> bool:
    """Whether position-wise layers run on the real tokens alone (nn.attention.Packing) by default.

    On the CPU the saved products win (1.06-1.10× at 10-30% padding). On an H200 in bf16 the
    gathers and scatters cost more than the padding they save: fixed-shape base and big training
    steps ran 0.89-0.92× as fast with padding skipped."""
    return where.type == "cpu"


def int16_dropout(x: torch.Tensor) -> bool:
    """Whether dropout draws its keep-mask from 16-bit random integers (about twice as fast as
    Bernoulli sampling on the CPU, forward and backward) rather than with F.dropout."""
    return x.device.type == "cpu"


@functools.cache
def reuse_freed_memory() -> None:
    """Every CPU training step allocates and frees the same large activations. glibc serves big
    blocks with mmap and unmaps them on free, so each step page-faults them in again; keeping
    them on the heap (no mmap, no trimming) makes steps a few percent faster. int8 inference
    (nn.int8) asks for it too, as its first product packs a weight: PyTorch's int8 products
    allocate their working buffers at every call, and int8 beam 4 of base dimensions (32 random
    sources of 40 pieces, 30 tokens; separate processes in turn, best of 5 each) took 870-928 ms
    against 949-1,126 with glibc's defaults (2-core AMD EPYC Zen 4, 2026-12-07); fp32 decoding
    gained nothing there (1,765-1,838 against 1,742-1,786 ms) and keeps the defaults. Once per
    process; Linux/glibc only."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        libc.mallopt(m_mmap_max, 0)
        libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):
        pass


def release_freed_memory() -> None:
    """Return freed heap pages to the OS (glibc keeps them otherwise): after prepare's vocabulary
    learning, so that the encoding workers do not inherit its peak. Linux/glibc only."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def search_sync_every(where: torch.device) -> int:
    """Steps between a search's checks of which sentences are done (each check waits for the device).
    On the CPU every step (1): a finished row leaves the batch at once, as each row costs its share
    of every product. On a GPU a step's kernels cost about the same for any number of rows, and
    each check stalls the queue of launches, so finished rows are masked on the device and the
    batch is compacted every 8 steps."""
    return 8 if where.type == "cuda" else 1


_beam_cache_choice = os.environ.get("AIAYN_BEAM_CACHE", "auto").lower()


def beam_cache_per_sentence(where: torch.device) -> bool:
    """Whether beam search keeps each decoder layer's keys and values per sentence and never moves
    them (nn.KVCache's per-sentence layout: a reorder moves an index of ancestors) rather than
    time-major with the rows moved at every reorder. On the CPU (auto): int8 beam 4 of base
    dimensions over 256 Bible verses ran 1.04× the time-major cache's tokens/s at 30 output tokens and
    1.10× at 60, fp32 1.06× and 1.07×, on a 2-core AMD EPYC Zen 4 (benchmarks/beam_cache.py, 2026-12-06). On a GPU it is
    unmeasured, so time-major stays there. AIAYN_BEAM_CACHE=auto|per-sentence|time-major."""
    choice = _beam_cache_layout()
    return where.type == "cpu" if choice == "auto" else choice == "per-sentence"


def _beam_cache_layout() -> str:
    if _beam_cache_choice not in ("auto", "per-sentence", "time-major"):
        raise ValueError(f"AIAYN_BEAM_CACHE={_beam_cache_choice!r}: expected auto, per-sentence or time-major")
    return _beam_cache_choice


def beam_cache_as(choice: str):
    """Within this block, beam search lays out its KV cache as AIAYN_BEAM_CACHE=`choice` would."""
    return _choice_as("_beam_cache_choice", choice, _beam_cache_layout)


SPELLED_OUT_ATTENTION_MAX_KEYS = 64
SPELLED_OUT_DECODING_MAX_KEYS = 128  # a decoding step's few queries (≤ 8), without autograd


def attention_spelled_out(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether Eq. (1) runs as two batched products and a softmax rather than PyTorch's fused kernel:
    on a CPU, for at most SPELLED_OUT_ATTENTION_MAX_KEYS keys, outside torch.compile. The fused CPU
    kernel works in blocks of queries and keys, which short sequences leave mostly idle.
    benchmarks/attention_cpu.py, forward and backward, 2 threads, on a 2-core AMD EPYC Zen 4
    (2026-12-06): a vit-tiny layer [B, h, L, d_k] = [128, 4, 50, 32] 15.7 ms fused against 9.6
    spelled out in fp32, 16.2 (the fused kernel in fp32) against 6.4 under bf16 autocast;
    [64, 4, 34, 32] 4.3 against 2.3 in fp32; at 128 keys fp32 0.88× (bf16 still 1.56×), at 256 keys
    fp32 0.68×. Whole updates: vit-tiny (bf16) 1.11×, dit-tiny (bf16) 1.09×, quickstart (fp32) 1.05×
    the fused kernel's items/s. On a Xeon with AMX, bf16 [128, 4, 50, 32]: 6.5 against 8.3.
    A decoding step (at most 8 queries, no autograd) is spelled out up to SPELLED_OUT_DECODING_MAX_KEYS:
    the encoder-decoder attention of beam 4 over [32, 8, S, 64] took 720 µs spelled out against
    1,247 fused at S = 69, 1,219 against 1,585 at 100, 2,502 against 2,277 at 150 (Zen 4, fp32).
    A decoding step over keys kept in bf16 (`decoding_memory_dtype`) is spelled out at any length."""
    import torch

    if q.device.type != "cpu":
        return False
    if torch.compiler.is_compiling():
        # a layer compiled for dynamic shapes keeps the fused kernel (the bound would split its graph in two by
        # length); a model compiled whole for one shape (a DiT's) takes the same bound as eager: dit-tiny's update,
        # bf16, batches of 16, 0.77× eager's time against 0.90× with the fused kernel (trainers in turn, Zen 4)
        return compiling_for_one_shape() and k.size(-2) <= SPELLED_OUT_ATTENTION_MAX_KEYS
    decoding = q.size(-2) <= 8 and not torch.is_grad_enabled()
    if decoding and k.dtype == torch.bfloat16:  # (bf16 encoder keys, `decoding_memory_dtype`: the fused kernel is slow in bf16)
        return True
    return k.size(-2) <= (SPELLED_OUT_DECODING_MAX_KEYS if decoding else SPELLED_OUT_ATTENTION_MAX_KEYS)


def compiling_for_one_shape() -> bool:
    """Whether torch.compile is tracing for static shapes (`torch.compile(dynamic=False)`): dynamo's
    settings while it traces (dynamic=True assumes shapes dynamic; the default turns them dynamic
    on a change of shape)."""
    import torch._dynamo

    config = torch._dynamo.config
    return torch.compiler.is_compiling() and config.assume_static_by_default and not config.automatic_dynamic_shapes


def attention_in_fp32(q: torch.Tensor) -> bool:
    """Whether bf16 on a CPU runs the fused attention kernel (Eq. 1) in fp32, training and decoding
    alike, where it runs at all (not for short sequences: `attention_spelled_out`).
    PyTorch's CPU attention kernel is slow in bf16: greedy decoding of base dimensions on a 2-core
    AMD EPYC Zen 4 spent 480 ms in bf16 attention against 122 ms in fp32, and a `quickstart`
    training update on a Zen 5 EPYC spent 30 ms in the bf16 kernel's backward pass against 6 ms in fp32."""
    import torch

    return q.device.type == "cpu" and q.dtype == torch.bfloat16


def decoding_attention_in_fp32(x: torch.Tensor) -> bool:
    """Whether bf16 decoding on a CPU keeps its KV cache in fp32 from the start, so that
    `attention_in_fp32` casts only each step's query."""
    import torch

    return attention_in_fp32(x) and not torch.is_grad_enabled()


def decoding_cache_dtype(k: torch.Tensor, int8_products: bool) -> torch.dtype | None:
    """The type in which int8 beam search keeps a decoder layer's own keys and values in its cache
    kept per sentence (nn.KVCache.append), given this step's keys `k` [N, h, L, d_k]: bf16 where
    `decoding_memory_dtype` keeps the encoder's keys in bf16 (int8 products, bf16 units, heads of
    64 or more), else fp32. A step reads the whole cache, from memory rather than cache, and bf16
    halves the bytes: int8 beam 4 of base dimensions on a 2-core AMD EPYC Zen 4 (32 random 40-piece
    sources, a third padded to 30; the two in turn, alternating which goes first, 2026-12-07) took
    0.94× and 0.99× the time at 30 tokens (medians of 16 and 12 rounds) and 0.83× at 60 (8
    rounds). None (the cache's own rule, `decoding_attention_in_fp32`) without int8 products."""
    return decoding_memory_dtype(k, True) if int8_products else None


def decoding_memory_dtype(k: torch.Tensor, int8_products: bool = False) -> torch.dtype:
    """The type in which decoding keeps the encoder's keys and values for the encoder-decoder
    attention (computed once per source, read whole at every step), given keys `k` [B, h, S, d_k]
    as the projection made them. Where the products are approximate already (int8 weights, or
    bf16 autocast), the CPU multiplies bf16 natively (`cpu_has_bf16`) and heads have 64
    dimensions or more: bf16, which halves the bytes a step reads. On a 2-core AMD EPYC Zen 4
    (2026-12-06/07) the two batched products of [32·8, 4, 64] queries over 40-240 contiguous keys
    took 0.41-0.88× their fp32 time, and int8 beam 4 of base dimensions (32 random sources: 40
    pieces and 30 tokens, 60 and 60; the two in turn in one process) ran 1.05-1.07× and
    1.01-1.04× as fast. Heads of 32 (the tiny preset) gained less or lost ([32·4, 4, 32] over
    40-240 keys: 1.2-1.6× the fp32 time) and keep fp32. bf16 on a CPU without bf16 units keeps
    fp32. Otherwise, and whenever autograd records, `k`'s own type. (The self-attention cache of
    int8 beam search: `decoding_cache_dtype`.)"""
    import torch

    if k.device.type != "cpu" or torch.is_grad_enabled():
        return k.dtype
    if (int8_products or k.dtype == torch.bfloat16) and k.size(-1) >= 64 and cpu_has_bf16():
        return torch.bfloat16
    return torch.float32 if k.dtype == torch.bfloat16 else k.dtype


TWO_STAGE_TOPK_MIN_COLUMNS = 16384


def two_stage_topk(x: torch.Tensor) -> bool:
    """Whether beam search takes each row's best continuations in two stages (generate.search.best_per_row:
    the best blocks of 32 columns, then the best entries of those) rather than with one topk: on a
    CPU, over at least TWO_STAGE_TOPK_MIN_COLUMNS columns. PyTorch's CPU topk of 8 per row of
    [128, V] took (one against two stages, µs, 2-core AMD EPYC Zen 4, 2026-12-07) 988 against 1,168
    at V = 8,000, 1,327 against 1,024 at 16,000, 2,872 against 1,091 at 32,000 and 4,893 against
    1,633 at 50,257 (GPT-2's vocabulary)."""
    return x.device.type == "cpu" and x.size(-1) >= TWO_STAGE_TOPK_MIN_COLUMNS


def partial_cache_reorder(where: torch.device) -> bool:
    """Whether beam search's KV-cache reorder first finds the rows that change and copies just those
    (the CPU: most beams keep their row, and finding them is a cheap look at the host's own memory),
    or gathers every row without asking (a GPU, where finding them would wait for the device)."""
    return where.type == "cpu"


def default_max_tokens(where: torch.device) -> int:
    """Source tokens × beam per decoding batch where none is given. A CPU is busy with a small
    batch. A GPU needs many hypotheses per step: on an H200 (base, beam 4, fp32) 256 sentences a
    batch decoded 2.6× as many tokens per second as 64. 32,768 holds ~256 sentences of 30
    subwords at beam 4."""
    return 32768 if where.type == "cuda" else 4096
