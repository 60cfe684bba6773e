"""The example models the kit builds by default, defined in code with seeded weights.

`image_classifier` and `text_encoder` are PyTorch modules (exported to ONNX); `image_pipeline`
and `text_pipeline` hold the pre/post-processing classes served as Python models. Point
`source:` in models.yaml at your own `package.module:callable` (and `weights:` at its state_dict)
to build yours instead; nothing here is downloaded.
"""
