"""Fitting the rest of the ecosystem: LoRA files other tools write and read, and kohya configs.

* :mod:`.lora_file` - what a LoRA ``.safetensors`` is (format, family, ranks, alphas,
  metadata) from its header alone; no torch.
* :mod:`.naming` - module names of each family in each format (kohya, diffusers/peft,
  ComfyUI) and the rules by which diffusers, ComfyUI and Automatic1111/Forge match them.
* :mod:`.convert` - lossless conversion between the formats (torch).
* :mod:`.check` - the compatibility check: diffusers' ``load_lora_weights`` on the family's
  pipeline, and the key names against ComfyUI's and Automatic1111/Forge's loaders.
* :mod:`.kohya_config` - kohya_ss GUI JSON and sd-scripts TOML configs in and out; no torch.
"""
