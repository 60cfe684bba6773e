"""Example PyTorch models the kit builds by default, defined in code with seeded weights.

Point `source:` in models.yaml at your own `package.module:callable` (and `weights:` at its
state_dict) to build yours instead; nothing here is downloaded.
"""
