"""The child process of the local backend: time one model file in its runtime.

    python -m devices.local_runner MODEL THREADS WARMUP RUNS MIN_TIME_S RESULT_JSON

It loads `.tflite` files in the ai-edge-litert interpreter (XNNPACK delegate, `num_threads`)
and `.pte` files in the ExecuTorch runtime (XNNPACK threadpool reset to THREADS), feeds a
fixed random input, runs WARMUP untimed inferences, then timed ones until there are at least
RUNS of them and they have taken at least MIN_TIME_S seconds in all, and writes
`{"samples_ms": [...]}` or `{"error": "..."}` to RESULT_JSON. Exit status 0 or 3.
Running in its own process keeps one model's crash, hang or state away from the next.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

_FLOAT = 6  # ExecuTorch ScalarType::Float


def time_model(path: Path, threads: int, warmup: int, runs: int, min_time_s: float = 0.0) -> tuple[list[float], list[float]]:
    """Latencies in ms of `warmup` warm-up inferences, then of the timed ones: at least `runs`,
    continued until they add up to `min_time_s`."""
    invoke = _tflite(path, threads) if path.suffix == ".tflite" else _pte(path, threads)
    warm = [_timed(invoke) for _ in range(warmup)]
    samples: list[float] = []
    gc.collect()
    gc.disable()  # no collector pauses inside the timed runs (this process does nothing else)
    total_ms, min_ms = 0.0, min_time_s * 1e3
    while len(samples) < runs or total_ms < min_ms:
        samples.append(_timed(invoke))
        total_ms += samples[-1]
    gc.enable()
    return warm, samples


def _timed(invoke: Callable[[], object]) -> float:
    start = time.perf_counter_ns()
    invoke()
    return (time.perf_counter_ns() - start) / 1e6


def _tflite(path: Path, threads: int) -> Callable[[], None]:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    rng = np.random.default_rng(0)
    for detail in interp.get_input_details():
        data = rng.standard_normal(detail["shape"]).astype(detail["dtype"])
        interp.set_tensor(detail["index"], data)
    return interp.invoke


def _pte(path: Path, threads: int) -> Callable[[], None]:
    import torch  # loads the libraries the extension module links against

    # The runtime's extension module itself (the one `executorch.runtime.Runtime` wraps, of the
    # pinned executorch): importing it through `executorch.runtime` also imports the whole
    # compiler, `executorch.exir`, which costs 3 of this process's 4 seconds of start-up.
    from executorch.extension.pybindings import _C

    _C._unsafe_reset_threadpool(threads)  # the XNNPACK delegate's threads
    program = _C._load_program(str(path), program_verification=_C.Verification.InternalConsistency)
    if "forward" not in {program.get_method_name(i) for i in range(program.num_methods())}:
        raise ValueError("the program has no 'forward' method")
    method = program.load_method("forward")
    meta = method.method_meta()
    gen = torch.Generator().manual_seed(0)
    inputs = []
    for i in range(meta.num_inputs()):
        info = meta.input_tensor_meta(i)
        if info.dtype() != _FLOAT:
            raise ValueError(f"input {i} is not float32; only float32 inputs are supported")
        inputs.append(torch.randn(tuple(info.sizes()), generator=gen))
    return lambda: (program, method(inputs))[1]  # the method needs its program alive


def main(argv: list[str]) -> int:
    """Entry point; see the module docstring."""
    model, threads, warmup, runs, min_time_s, out = argv
    try:
        _, samples = time_model(Path(model), int(threads), int(warmup), int(runs), float(min_time_s))
        result = {"samples_ms": samples}
        status = 0
    except Exception as exc:  # any runtime failure becomes one line for the parent
        text = " ".join(str(exc).split()) or type(exc).__name__
        result, status = {"error": text}, 3
    Path(out).write_text(json.dumps(result))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
