"""From the user's PyTorch module to a verified ONNX file, the steps every ONNX model takes:

    source       the module and checkpoint the spec names, imported and instantiated
    samples      inputs drawn from the declared dims (every variable dim at its extremes)
    to_onnx      torch.onnx.export with the batch and variable dims symbolic
    dims         output dims the exporter pinned, made symbolic again
    padding      the gpu target's batch padded to max_batch_size inside the graph
    verify       ONNX Runtime's answers against PyTorch's, tensor by tensor
    fingerprint  what the exported file depends on, hashed, so an unchanged model is reused

Imports: builder.spec, builder.checker (the ONNX signature rules, build records) and the
shared basics; never builder.variants or builder.pipeline.
"""
