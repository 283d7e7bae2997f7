"""One lock for every place this process builds or loads a torch model.

diffusers' and transformers' ``from_pretrained`` build the model's layers without memory
(accelerate's ``init_empty_weights`` and the meta device) by patching
``torch.nn.Module.register_parameter`` **for the whole process**, not for the calling
thread. A model built on another thread at that moment — a captioner loading while the
trainer loads its base model, LoRA layers being added while a captioner loads — gets
empty (meta) weights and fails ("Cannot copy out of meta tensor") or, worse, trains
nothing. Whoever builds or loads a model holds :data:`MODEL_BUILD_LOCK` while doing so;
running the models (training steps, captioning) needs no lock.
"""

from __future__ import annotations

import threading

#: Held while a model is built, loaded or given LoRA layers (re-entrant: loading may
#: build the tiny model first).
MODEL_BUILD_LOCK = threading.RLock()
