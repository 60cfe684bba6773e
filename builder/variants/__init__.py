"""Reduced-precision and compiled variants of a verified ONNX model, one module per format:

    onnx_int8_fp16      INT8 (static QDQ) and FP16 ONNX, with ONNX Runtime's own tools
    tensorrt_plan       a TensorRT plan through the `tensorrt` API (kept thin), with
    tensorrt_profiles   its optimization profiles, calibration batches and cache (pure Python)
    torch_compiled      the PyTorch model compiled ahead of time by AOTInductor

beside what every format shares: calibration (the spec's representative inputs), batches, the
accuracy gate against FP32 PyTorch (accuracy), and build (one variant version: rebuilt when
anything it depends on changed, judged, recorded).

Imports: builder.spec, builder.export, builder.checker (the formats' file names, build records,
plan profiles) and the shared basics; never builder.pipeline, which calls build.build_variant.
"""
