"""Build TensorRT ``.plan`` engines from the bundle's ONNX files (TensorRT 10 and 11).

``tensorrt`` is imported lazily: the rest of the export side works without it, and a
request for ``plan`` where it is missing stops with one line naming the alternatives.

Precision. TensorRT 11 removed weak typing (``BuilderFlag.FP16`` and friends): every
network is strongly typed and runs in the types the ONNX spells out. So our fp16 engines
come from an fp16-typed ONNX (``--precision fp16``, GroupNorm kept in fp32 inside the
graph) built as a strongly typed network, which TensorRT 10 supports too. Only when an
fp32 ONNX is built with ``precision="fp16"`` do we fall back to the TensorRT 10 weak-typing
``BuilderFlag.FP16`` (checked with hasattr; on 11 that request is an error).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DEFAULT_WORKSPACE = 2 << 30  # bytes
DEFAULT_OPT_LEVEL = 3  # TensorRT's own default; 4-5 search longer for faster kernels


class TensorRTUnavailable(RuntimeError):
    """``import tensorrt`` failed (one-line message naming the alternatives)."""


class TensorRTBuildError(RuntimeError):
    """The ONNX parser or the builder failed (message lists the parser errors)."""


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, or TensorRTUnavailable with a one-line explanation."""
    try:
        import tensorrt as trt
    except Exception as e:  # noqa: BLE001 - stub wheels raise odd errors at import
        raise TensorRTUnavailable(
            "TensorRT is not installed (import tensorrt failed: "
            f"{type(e).__name__}); use --formats onnx (.onnx, ONNX Runtime) or pt2 (.pt2, AOTInductor) instead"
        ) from None
    return trt


def _major(trt: Any) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError):
        return 0


def onnx_is_fp16(onnx_path: str | os.PathLike[str]) -> bool:
    """True when any graph input or output is float16 (our fp16 export)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    fp16 = onnx.TensorProto.FLOAT16
    return any(v.type.tensor_type.elem_type == fp16 for v in [*model.graph.input, *model.graph.output])


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _network(trt: Any, builder: Any, strongly_typed: bool) -> Any:
    flags = 0
    # STRONGLY_TYPED: opt-in on 10.x, accepted and ignored (always on) on 11.x.
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return builder.create_network(flags)


def _parse(trt: Any, network: Any, logger: Any, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTBuildError(f"TensorRT could not parse {onnx_path.name}: " + " | ".join(errors or ["no details"]))


def _profile(builder: Any, network: Any) -> Any:
    """Static shapes: min = opt = max = the ONNX shape of every input."""
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        if any(int(d) < 0 for d in shape):
            raise TensorRTBuildError(f"input {tensor.name} has a dynamic shape {shape}; bundles are static")
        profile.set_shape(tensor.name, shape, shape, shape)
    return profile


def _config(
    trt: Any, builder: Any, precision: str, weak_fp16: bool, workspace: int, opt_level: int, cache_bytes: bytes
) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    config.builder_optimization_level = int(opt_level)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 convolutions would miss the 1e-3 parity gate
    if weak_fp16:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise TensorRTBuildError(
                f"TensorRT {trt.__version__} has no FP16 builder flag (weak typing was removed in 11); "
                "export with --precision fp16 to get an fp16-typed ONNX"
            )
        config.set_flag(trt.BuilderFlag.FP16)
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    return config


def build_plan(
    onnx_path: str | os.PathLike[str],
    plan_path: str | os.PathLike[str],
    precision: str = "fp32",
    timing_cache: str | os.PathLike[str] | None = None,
    workspace: int = DEFAULT_WORKSPACE,
    opt_level: int = DEFAULT_OPT_LEVEL,
) -> Path:
    """Build ``plan_path`` from ``onnx_path``; reuses and updates ``timing_cache`` (a file)."""
    trt = require_tensorrt()
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    typed_fp16 = onnx_is_fp16(onnx_path)
    weak_fp16 = precision == "fp16" and not typed_fp16
    if weak_fp16 and _major(trt) >= 11:
        raise TensorRTBuildError(
            f"TensorRT {trt.__version__}: fp16 needs an fp16-typed ONNX (export with --precision fp16)"
        )
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = _network(trt, builder, strongly_typed=not weak_fp16)
    _parse(trt, network, logger, onnx_path)
    cache_path = Path(timing_cache) if timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    config = _config(trt, builder, precision, weak_fp16, workspace, opt_level, cache_bytes)
    config.add_optimization_profile(_profile(builder, network))
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTBuildError(f"TensorRT failed to build {plan_path.name} (see the TensorRT log above)")
    _write_atomic(plan_path, bytes(serialized))
    if cache_path is not None:
        _write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
    return plan_path


def _torch_dtype(trt: Any, dt: Any) -> Any:
    import torch

    table = {"FLOAT": torch.float32, "HALF": torch.float16, "UINT8": torch.uint8, "INT8": torch.int8}
    table.update({"INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "BF16": torch.bfloat16})
    for name, torch_dt in table.items():
        if hasattr(trt.DataType, name) and dt == getattr(trt.DataType, name):
            return torch_dt
    raise TensorRTBuildError(f"unsupported TensorRT dtype {dt}")


def run_plan(plan_path: str | os.PathLike[str], feeds: Mapping[str, Any], output_names: Sequence[str]) -> list[Any]:
    """Run a plan once on the current CUDA stream (for the parity check); torch tensors in/out."""
    import torch

    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(Path(plan_path).read_bytes())
    if engine is None:
        raise TensorRTBuildError(f"TensorRT could not deserialize {plan_path}")
    context = engine.create_execution_context()
    keep = []
    for name, tensor in feeds.items():
        t = tensor.cuda().contiguous()
        keep.append(t)
        context.set_tensor_address(name, t.data_ptr())
    outs = []
    for name in output_names:
        shape = tuple(engine.get_tensor_shape(name))
        out = torch.empty(shape, dtype=_torch_dtype(trt, engine.get_tensor_dtype(name)), device="cuda")
        context.set_tensor_address(name, out.data_ptr())
        outs.append(out)
    stream = torch.cuda.current_stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise TensorRTBuildError(f"TensorRT execution of {plan_path} failed")
    stream.synchronize()
    return outs
